from pathlib import Path

import pytest

from ringmoe.config.schema import load_config
from ringmoe.core.errors import ConfigError

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def test_tiny_config_loads_with_overrides() -> None:
    config = load_config(TINY, ["train.steps=7", "model.mask_ratio=0.5"])
    assert config.train.steps == 7 and config.model.mask_ratio == 0.5
    assert config.parallel.expert_parallel_size == 2


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(TINY, ["train.stepz=3"])


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  embed_dimm: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model.embed_dimm"):
        load_config(path)


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(TINY, ["train.lr=fast"])


def test_expert_count_must_divide_ep_size() -> None:
    with pytest.raises(ConfigError, match=r"model.modal_experts\[0\]=3"):
        load_config(TINY, ["model.modal_experts=[3,4]"])


def test_heads_must_divide_tp_size() -> None:
    with pytest.raises(
        ConfigError, match=r"model.num_heads\[0\]=2 is not divisible by parallel.tensor_parallel_size=4"
    ):
        load_config(TINY, ["parallel.tensor_parallel_size=4", "parallel.expert_parallel_size=1"])


def test_override_without_equals_is_rejected() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TINY, ["train.steps"])


def test_a_mapping_replaces_the_default_and_a_dotted_key_edits_it(tmp_path: Path) -> None:
    path = tmp_path / "sar.yaml"
    path.write_text("model:\n  in_chans: {sar_amplitude: 3}\ndata:\n  modalities: [sar_amplitude]\n")
    assert load_config(path).model.in_chans == {"sar_amplitude": 3}  # not merged into the four defaults
    assert load_config(TINY, ["model.in_chans={optical: 3}", "data.modalities=[optical]"]).model.in_chans == {
        "optical": 3
    }
    edited = load_config(TINY, ["model.in_chans.optical=5"]).model.in_chans
    assert edited["optical"] == 5 and len(edited) == 4


def test_data_modalities_need_a_patch_embedding() -> None:
    with pytest.raises(ConfigError, match=r"data.modalities \['sar_complex'\] have no patch embedding"):
        load_config(TINY, ["data.modalities=[sar_complex]", "model.in_chans={optical: 3}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prune.strategy=greedy", r"prune.strategy 'greedy' not in"),
        ("prune.modalities=[radar]", r"prune.modalities: unknown \['radar'\]"),
        ("prune.calibration_batches=0", r"prune.calibration_batches=0 must be >= 1"),
        ("prune.collab_experts=[-1,2]", r"prune.collab_experts \[-1, 2\] has a negative count"),
        ("train.min_lr=0.1", r"train.lr=0.002 and train.min_lr=0.1"),
    ],
)
def test_prune_and_lr_settings_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_cli_takes_overrides_after_options_and_rejects_other_leftovers(capsys) -> None:
    from ringmoe.cli.main import main

    with pytest.raises(SystemExit):
        main(["prune", "a", "b", "--config", str(TINY), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["prune", "missing_dir", "out", "--config", str(TINY), "prune.budget=1M"]) == 2
    assert "missing_dir/ringmoe_model.json: missing" in capsys.readouterr().err


def test_recipe_and_places_must_agree_and_contrastive_keys_are_checked():
    from pathlib import Path

    from ringmoe.recipes.registry import load_run_config as load_config

    tiny = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "skysense_tiny.yaml"
    assert load_config(tiny).model.recipe == "skysense"
    with pytest.raises(ConfigError, match="the skysense recipe reads places"):
        load_config(tiny, ["data.places_per_batch=0"])
    with pytest.raises(ConfigError, match="contrastive.weights: unknown terms \\['pixels'\\]"):
        load_config(tiny, ["contrastive.weights.pixels=2.0"])
    with pytest.raises(ConfigError, match="model.fusion.experts=3 is not divisible"):
        load_config(tiny, ["model.fusion.experts=3"])
    with pytest.raises(ConfigError, match="data.max_dates"):
        load_config(tiny, ["data.max_dates.optical=2"])


def test_metric_callbacks_are_a_configurable_list():
    from ringmoe.train.callbacks import metric_callbacks

    config = load_config(TINY, ["train.callbacks=[accounting,throughput]"])
    assert [c.name for c in metric_callbacks(config, 0.0, 1)] == ["accounting", "throughput"]
    assert metric_callbacks(load_config(TINY, ["train.callbacks=[]"]), 0.0, 1) == []
    for bad in ("[throughput,bogus]", "[throughput,throughput]"):
        with pytest.raises(ConfigError, match="train.callbacks .*: each once, from"):
            metric_callbacks(load_config(TINY, [f"train.callbacks={bad}"]), 0.0, 1)

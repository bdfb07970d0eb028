"""Model sizes counted on the meta device: the paper's 14.7B / ~2.4B-active model, and configs that agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ringmoe.cli.main import main
from ringmoe.config.schema import load_config, load_model_config
from ringmoe.models.factory import build_model
from ringmoe.models.size import forward_flops_per_sample, parameter_report

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def paper_model():
    config = load_model_config(CONFIGS / "model" / "ringmoe_14b7.yaml")
    with torch.device("meta"):
        model = build_model(config)
    return config, model


def test_the_14b7_model_has_the_papers_size(paper_model):
    config, model = paper_model
    assert all(p.is_meta for p in model.parameters())  # nothing was allocated
    report = parameter_report(model, list(config.in_chans))
    assert abs(report.encoder - 14.7e9) / 14.7e9 < 0.01
    for modality, active in report.active_per_token.items():
        assert abs(active - 2.4e9) / 2.4e9 < 0.03, modality
    assert sum(report.by_component.values()) == report.total == sum(p.numel() for p in model.parameters())


def test_expert_counts_match_the_structure(paper_model):
    """21 experts per block (16 modal + 4 collaborative + 1 shared), each 2 linears of d x 4d, in every block."""
    config, model = paper_model
    report = parameter_report(model, list(config.in_chans))
    dims = [config.embed_dim * 2**i for i in range(4)]
    expert = [2 * 4 * d * d + 4 * d + d for d in dims]  # fc1 + fc2 weights and biases
    blocks = config.depths
    assert report.by_component["modal_experts"] == sum(16 * e * n for e, n in zip(expert, blocks))
    assert report.by_component["collab_experts"] == sum(4 * e * n for e, n in zip(expert, blocks))
    assert report.by_component["shared_expert"] == sum(e * n for e, n in zip(expert, blocks))


def test_flops_are_dominated_by_the_three_active_experts(paper_model):
    config, _ = paper_model
    flops = forward_flops_per_sample(config)
    # One expert costs 2 linears x 2 FLOPs x d x 4d per token and three run per token. Tokens fall 4x and d
    # doubles per stage, so every block costs what a stage-1 block does (2304 tokens at d = 448); 24 blocks.
    per_block = 3 * 2 * 2 * 4 * 2304 * 448**2
    assert flops["experts"] == 24 * per_block
    assert flops["experts"] / flops["total"] > 0.8 and 5e11 < flops["total"] < 8e11


def test_tiny_model_yaml_is_the_tiny_run_models():
    run_model = load_config(CONFIGS / "tiny.yaml").model
    # The run derives the decoders' extra target channels from its objective section; the model YAML has none.
    assert run_model.decoder_extra_channels == {"sar_complex": 4, "multispectral": 2}
    run_model.decoder_extra_channels = {}
    assert load_model_config(CONFIGS / "model" / "ringmoe_tiny.yaml") == run_model


def test_cli_prints_counts_and_names_bad_keys(capsys):
    assert main(["model-info", str(CONFIGS / "model" / "ringmoe_14b7.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ringmoe_14b7: 14.746B encoder parameters") and "2.430B active per token" in out
    assert main(["model-info", str(CONFIGS / "model" / "ringmoe_base.yaml"), "depth=[1]"]) == 2
    assert "'depth'" in capsys.readouterr().err


def test_memory_per_rank_follows_zero_and_expert_parallel_accounting(paper_model):
    from ringmoe.models.memory import TENSOR_PARALLEL_COMPONENTS, Layout, memory_per_rank

    config, model = paper_model
    report = parameter_report(model, list(config.in_chans))
    experts = report.by_component["modal_experts"] + report.by_component["collab_experts"]
    dense = report.total - experts
    layout = Layout(gpus=4, expert_parallel=4, zero_stage=2)
    mem = memory_per_rank(report, config, layout)
    # 4 ranks, EP=4: each expert lives once (no replica to shard over), dense weights have 4 replicas.
    assert mem["params"] == pytest.approx(2 * (experts / 4 + dense))
    assert mem["grads"] == pytest.approx(2 * (experts / 4 + dense / 4))
    assert mem["optimizer"] == pytest.approx(12 * (experts / 4 + dense / 4))
    by_stage = [memory_per_rank(report, config, Layout(gpus=64, expert_parallel=4, zero_stage=z)) for z in range(3)]
    assert [m["total"] for m in by_stage] == sorted((m["total"] for m in by_stage), reverse=True)
    stored = memory_per_rank(report, config, Layout(gpus=4, expert_parallel=4, activation_checkpointing=False))
    assert stored["activations"] > 3 * mem["activations"]
    # TP 2 halves attention and experts only; norms, routers, embeddings, decoders stay whole.
    split = sum(report.by_component[c] for c in TENSOR_PARALLEL_COMPONENTS) - experts
    tp2 = memory_per_rank(report, config, Layout(gpus=8, tensor_parallel=2, expert_parallel=4, zero_stage=2))
    assert tp2["params"] == pytest.approx(2 * (experts / 8 + split / 2 + (dense - split)))


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (dict(gpus=8, expert_parallel=3), "ep the data-parallel size"),
        (dict(gpus=8, expert_parallel=8), "ep 8 does not divide the experts per router"),
        (dict(gpus=8, tensor_parallel=4), "tp 4 does not divide the attention heads"),
        (dict(gpus=8, zero_stage=3), "MoE supports ZeRO stage 0, 1 or 2"),
    ],
)
def test_impossible_memory_layouts_are_named(paper_model, layout, message):
    from ringmoe.core.errors import ConfigError
    from ringmoe.models.memory import Layout, memory_per_rank

    config, model = paper_model
    report = parameter_report(model, list(config.in_chans))
    with pytest.raises(ConfigError, match=message):
        memory_per_rank(report, config, Layout(**layout))


def test_cli_memory_for_a_given_layout(capsys):
    assert main(["model-info", str(CONFIGS / "model" / "ringmoe_14b7.yaml"), "--layout", "16:2:4:2:4"]) == 0
    row = capsys.readouterr().out.split("memory per rank")[1].splitlines()[2].split()
    assert row[:6] == ["16", "2", "4", "8", "2", "4"]
    assert main(["model-info", str(CONFIGS / "model" / "ringmoe_14b7.yaml"), "--layout", "16:2"]) == 2
    assert "expected GPUS:TP:EP:ZERO" in capsys.readouterr().err


def test_cli_prints_the_memory_of_the_three_layouts(capsys):
    assert main(["model-info", str(CONFIGS / "model" / "ringmoe_14b7.yaml"), "--memory"]) == 0
    table = capsys.readouterr().out.split("memory per rank")[1].splitlines()[2:]
    assert [int(row.split()[0]) for row in table] == [8, 64, 256]
    assert all(float(row.split()[-1]) < 80 for row in table)  # fits 80 GB GPUs


def test_skysense_paper_scale_config_on_the_meta_device(capsys):
    """The SkySense paper's model has 2.06B parameters; ours, from the same code as the tiny recipe, 2.081B."""
    from ringmoe.recipes.registry import build_pretraining_model

    path = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "skysense_2b.yaml"
    config = load_config(path)
    with torch.device("meta"):
        model = build_pretraining_model(config.model)
    encoder = sum(p.numel() for p in model.student.parameters())
    assert encoder == pytest.approx(2.06e9, rel=0.02)
    assert sum(p.numel() for p in model.teacher.parameters()) == encoder  # the EMA teacher is a full copy
    assert main(["model-info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "skysense_2b: 2.081B encoder parameters" in printed and "temporal fusion" in printed
    assert set(model.student.spatial) == {"optical", "multispectral", "sar_amplitude"}


def test_the_cpu_recipe_and_its_14b7_config_differ_only_in_scale():
    """configs/recipes/ringmoe_views_{cpu,14b7}.yaml: one objective; the big one is the paper's model plus the
    recipe's projection head, built on the meta device."""
    small = load_config(CONFIGS / "recipes" / "ringmoe_views_cpu.yaml")
    large = load_config(CONFIGS / "recipes" / "ringmoe_views_14b7.yaml")
    assert small.objective == large.objective and large.model.projection_dim == small.model.projection_dim > 0
    paper = load_model_config(CONFIGS / "model" / "ringmoe_14b7.yaml")
    for key in ("embed_dim", "depths", "num_heads", "window_size", "modal_experts", "collab_experts", "img_size"):
        assert getattr(large.model, key) == getattr(paper, key), key
    with torch.device("meta"):
        model = build_model(large.model)
    report = parameter_report(model, list(large.model.in_chans))
    assert abs(report.encoder - 14.7e9) / 14.7e9 < 0.01
    width = paper.embed_dim * 2 ** (len(paper.depths) - 1)
    head = sum(p.numel() for p in model.projector.parameters())
    assert head == width * 2 * width + 2 * width + 2 * width * 128 + 128
    assert report.by_component["decoders"] == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("decoders.", "projector."))
    )

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

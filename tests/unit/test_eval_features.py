"""Every encoder source gives the same features for the same weights: a DeepSpeed checkpoint, its consolidation,
and the HuggingFace export of that; a random-init baseline is reproducible by seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ringmoe.checkpoint.consolidate import consolidate
from ringmoe.config.schema import ModelConfig
from ringmoe.core.errors import CheckpointError
from ringmoe.eval.features import load_encoder
from ringmoe.export.huggingface import export_huggingface
from ringmoe.models.factory import build_model
from tests.checkpoint.synthetic import write_synthetic_checkpoint
from tests.unit.test_model import batch_for

REPO = Path(__file__).resolve().parents[2]


def test_checkpoint_consolidated_and_huggingface_sources_agree(tmp_path):
    config = ModelConfig()
    tag = tmp_path / "global_step1"
    write_synthetic_checkpoint(tag, config, state=build_model(config, seed=2).state_dict())
    consolidated = consolidate(tag, tmp_path / "consolidated")
    hf = export_huggingface(consolidated, tmp_path / "hf")
    batch = batch_for(config, seed=1)
    sources = [load_encoder(tag), load_encoder(consolidated), load_encoder(hf)]
    assert [s.interface for s in sources] == ["ringmoe", "ringmoe", "huggingface"]
    for modality, images in batch.images.items():
        stages = [s.stages(images, modality) for s in sources]
        assert [m.shape[1] for m in stages[0]] == [config.embed_dim * 2**i for i in range(len(config.depths))]
        for other in stages[1:]:
            assert all(torch.equal(a, b) for a, b in zip(stages[0], other))
        assert sources[0].pooled(images, modality).shape == (len(images), config.embed_dim * 2)


def test_random_baseline_is_reproducible_by_seed():
    spec = str(REPO / "configs" / "model" / "ringmoe_tiny.yaml")
    batch = batch_for(ModelConfig(), seed=0)
    a, b, c = load_encoder(f"random:{spec}@3"), load_encoder(f"random:{spec}@3"), load_encoder(f"random:{spec}@4")
    assert "random init" in a.name and a.modalities == list(ModelConfig().in_chans)
    images = batch.images["optical"]
    assert torch.equal(a.pooled(images, "optical"), b.pooled(images, "optical"))
    assert not torch.equal(a.pooled(images, "optical"), c.pooled(images, "optical"))


def test_pixel_baseline_and_missing_timm_are_explicit():
    from ringmoe.eval.encoder import EncoderUnavailable

    pixels = load_encoder("pixels:32")
    maps = pixels.stages(torch.ones(2, 3, 32, 32), "optical")
    assert [tuple(m.shape) for m in maps] == [(2, 3, 8, 8), (2, 3, 4, 4)] and pixels.img_size == 32
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(EncoderUnavailable, match="timm:resnet18: timm is not importable"):
            load_encoder("timm:resnet18")
    else:
        pytest.skip("timm is importable here; its ImageNet weights need a download")


def test_an_unknown_source_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not an encoder source"):
        load_encoder(tmp_path)

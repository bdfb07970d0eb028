"""Frozen encoders from whatever a user has, and pooled features from them.

``load_encoder(source)`` takes:

- a DeepSpeed checkpoint directory (``global_stepN`` with ``ringmoe_meta.json``), read through consolidation;
- a consolidated or pruned directory (``ringmoe_model.json``);
- a HuggingFace export (``config.json`` with ``model_type: ringmoe``), loaded with ``transformers`` exactly as a
  downstream user would;
- ``random:<model yaml>[@seed]``: the same architecture at its initialization, the reference every score needs;
- ``pixels[:<size>]``: no encoder at all, the band means of 4 and 8 px cells (what a probe gets from raw pixels);
- ``timm:<model name>``: an ImageNet-pretrained timm backbone on the RGB bands, when timm is installed.

Each becomes a ``FrozenEncoder``: ``stages(images, modality)`` gives the multi-scale feature maps (finest first),
``features`` the last of them, ``pooled`` its spatial mean, all in eval mode without gradients. Inputs must be
``img_size`` square; ``pooled_features`` and ``dense_features`` fit images of any size to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME, load_consolidated_model, read_deepspeed_checkpoint
from ringmoe.checkpoint.save import META_NAME
from ringmoe.config.schema import ModelConfig, load_model_config
from ringmoe.core.errors import CheckpointError
from ringmoe.core.modalities import MODALITIES
from ringmoe.eval.encoder import EncoderUnavailable, FrozenEncoder
from ringmoe.recipes.registry import build_pretraining_model, recipe_for_hf, recipe_of


class PixelStatistics(nn.Module):
    """The no-encoder reference: each channel's mean over 4 and 8 px cells."""

    def forward(self, images: torch.Tensor, modality: str) -> list[torch.Tensor]:
        return [F.avg_pool2d(images, 4), F.avg_pool2d(images, 8)]


class TimmBackbone(nn.Module):
    """An ImageNet backbone from timm on the RGB bands (optical as is; multispectral B04, B03, B02), with
    ImageNet normalization of the reflectance; SAR has no RGB, so those tasks are skipped for it."""

    RGB_CHANNELS = {"optical": [0, 1, 2], "multispectral": [2, 1, 0]}

    def __init__(self, name: str) -> None:
        super().__init__()
        try:
            import timm
        except Exception as exc:  # torchvision beside a CPU torch build fails at import with various errors
            raise EncoderUnavailable(f"timm:{name}: timm is not importable here ({type(exc).__name__}: {exc})")
        self.backbone = timm.create_model(name, pretrained=True, features_only=True)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, modality: str) -> list[torch.Tensor]:
        rgb = images[:, self.RGB_CHANNELS[modality]].clamp(0, 1)
        return list(self.backbone((rgb - self.mean) / self.std))


def _released(model: nn.Module, config: ModelConfig, name: str) -> FrozenEncoder:
    """The encoder a pretraining model releases (its recipe says which part: RingMoE's encoder, SkySense's EMA
    teacher, ...) and how it is called."""
    module, interface = recipe_of(config).released(model)
    return FrozenEncoder(name, list(config.in_chans), module, config.img_size, interface)


def load_encoder(source: str | Path) -> FrozenEncoder:
    text = str(source)
    if text.startswith("random:"):
        spec, _, seed = text.removeprefix("random:").partition("@")
        config = load_model_config(spec)
        model = build_pretraining_model(config, seed=int(seed or 0))
        return _released(model, config, f"random init ({Path(spec).stem}, seed {seed or 0})")
    if text == "pixels" or text.startswith("pixels:"):
        size = int(text.partition(":")[2] or 64)
        return FrozenEncoder(f"pixel statistics ({size} px)", list(MODALITIES), PixelStatistics(), size, "images")
    if text.startswith(("specialist:", "ensemble:")):
        from ringmoe.eval.ensemble import load_ensemble_encoder  # Ensemble-of-Specialists exports

        return load_ensemble_encoder(text)
    if text.startswith("timm:"):
        return FrozenEncoder(
            text, ["optical", "multispectral"], TimmBackbone(text.removeprefix("timm:")), 224, "images"
        )
    path = Path(source)
    if (path / META_NAME).is_file():
        state, config = read_deepspeed_checkpoint(path)
        model = build_pretraining_model(config)
        model.load_state_dict(state)
        return _released(model, config, f"checkpoint {path.name}")
    if (path / MODEL_CONFIG_NAME).is_file():
        model, config = load_consolidated_model(path)
        return _released(model, config, f"consolidated {path.name}")
    hf_config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    recipe = recipe_for_hf(hf_config.get("model_type", "")) if hf_config else None
    if recipe is not None and recipe.hf is not None:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(path), trust_remote_code=True)
        encoder = hf_config.get("encoder", hf_config)  # nested (skysense) or flat (ringmoe) encoder settings
        name = f"huggingface {path.name}"
        return FrozenEncoder(name, list(encoder["in_chans"]), model, encoder["img_size"], recipe.hf.interface)
    raise CheckpointError(
        f"{source}: not an encoder source; expected a DeepSpeed checkpoint ({META_NAME}), a consolidated or pruned "
        f"directory ({MODEL_CONFIG_NAME}), a HuggingFace export (config.json, model_type ringmoe), "
        "random:<model yaml>[@seed], pixels[:<size>] or timm:<model name>"
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _tile_starts(length: int, size: int) -> list[int]:
    """Window starts covering ``length`` with windows of ``size``, the last flush with the end."""
    starts = list(range(0, length - size + 1, size))
    return starts if starts[-1] == length - size else starts + [length - size]


def _fitted_views(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Images larger than ``size`` become the covering ``size`` windows; smaller ones are resized up to it."""
    height, width = images.shape[-2:]
    if height < size or width < size:
        return [_resize(images, size)]
    return [
        images[..., y : y + size, x : x + size] for y in _tile_starts(height, size) for x in _tile_starts(width, size)
    ]


def pooled_features(encoder: FrozenEncoder, images: torch.Tensor, modality: str, batch_size: int) -> torch.Tensor:
    """(N, C): the pooled features of an image's windows averaged (a 120 px BigEarthNet patch is four 64 px
    windows), or of the image resized up to the encoder's input when it is smaller."""
    out = []
    for start in range(0, len(images), batch_size):
        views = _fitted_views(images[start : start + batch_size], encoder.img_size)
        out.append(torch.stack([encoder.pooled(view, modality) for view in views]).mean(dim=0))
    return torch.cat(out).double()


def dense_features(encoder: FrozenEncoder, images: torch.Tensor, modality: str, batch_size: int) -> torch.Tensor:
    """(N, sum C_s, H, W): every stage's map, computed on the image resized to the encoder's input and brought
    back to the image's own H x W (bilinear), concatenated (the input of a linear segmentation decoder)."""
    height, width = images.shape[-2:]
    out = []
    for start in range(0, len(images), batch_size):
        maps = encoder.stages(_resize(images[start : start + batch_size], encoder.img_size), modality)
        up = [F.interpolate(m.float(), size=(height, width), mode="bilinear", align_corners=False) for m in maps]
        out.append(torch.cat(up, dim=1))
    return torch.cat(out).double()

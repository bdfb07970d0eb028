"""Build models from their typed config (kept apart from the model files so those stay exportable as-is)."""

from __future__ import annotations

import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.core.encoder_config import encoder_config
from ringmoe.models.encoder import RingMoESimMIM


def build_model(config: ModelConfig, seed: int | None = None) -> RingMoESimMIM:
    """Same code for the tiny CPU model and the 14.7B one; ``seed`` makes initial weights identical on every rank."""
    config.validate()
    if seed is not None:
        torch.manual_seed(seed)
    return RingMoESimMIM(encoder_config(config), dict(config.decoder_extra_channels), config.projection_dim)

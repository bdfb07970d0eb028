"""Build models from their typed config (kept apart from the model files so those stay exportable as-is)."""

from __future__ import annotations

import dataclasses

import torch

from ringmoe.config.schema import ModelConfig
from ringmoe.models.encoder import RingMoESimMIM


def model_kwargs(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def build_model(config: ModelConfig, seed: int | None = None) -> RingMoESimMIM:
    """Same code for the tiny CPU model and the 14.7B one; ``seed`` makes initial weights identical on every rank."""
    config.validate()
    if seed is not None:
        torch.manual_seed(seed)
    return RingMoESimMIM(**model_kwargs(config))

"""The pretraining model of a model config: RingMoE's SimMIM model or a recipe's (``model.recipe``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ringmoe.config.schema import ModelConfig
from ringmoe.models.build import build_model
from ringmoe.models.skysense import SkySenseEncoder
from ringmoe.recipes.skysense import SkySensePretrain


def skysense_encoder_kwargs(config: ModelConfig) -> dict:
    fusion = config.fusion
    return dict(
        in_chans=dict(config.in_chans), img_size=config.img_size, patch_size=config.patch_size,
        embed_dim=config.embed_dim, depths=list(config.depths), num_heads=list(config.num_heads),
        window_size=config.window_size, mlp_ratio=config.mlp_ratio, modal_experts=list(config.modal_experts),
        collab_experts=list(config.collab_experts), capacity_factor=config.capacity_factor,
        min_capacity=config.min_capacity, fusion_depth=fusion.depth, fusion_heads=fusion.heads,
        fusion_experts=fusion.experts, activation_checkpointing=config.activation_checkpointing,
    )  # fmt: skip


def build_pretraining_model(config: ModelConfig, seed: int | None = None) -> nn.Module:
    """Same code for tiny and paper-scale configs; ``seed`` makes initial weights identical on every rank."""
    if config.recipe == "ringmoe":
        return build_model(config, seed=seed)
    config.validate()
    if seed is not None:
        torch.manual_seed(seed)
    return SkySensePretrain(SkySenseEncoder(**skysense_encoder_kwargs(config)), dataclasses.replace(config.fusion))

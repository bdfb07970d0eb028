"""A toy recipe, written as a user would add one: this file plus tests/recipes/toy.yaml.

It pretrains the RingMoE encoder by predicting each image's per-channel mean from its pooled features (no
masks): nothing a real recipe would do, but it exercises every hook of ``Recipe`` through ``ringmoe train``,
consolidation, HuggingFace export and evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.config.schema import ModelConfig, RunConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.models.factory import build_model
from ringmoe.recipes.registry import Recipe, register
from ringmoe.recipes.simmim import RingMoESimMIMRecipe
from ringmoe.recipes.step import check_tile_size


class ChannelMeans(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = build_model(config).encoder
        width = self.encoder.num_features
        self.heads = nn.ModuleDict({m: nn.Linear(width, c) for m, c in config.in_chans.items()})

    def forward(self, batch: MultiModalBatch):
        output = self.encoder.forward_features(batch)
        pooled = {m: f.mean(dim=(2, 3)) for m, f in output.split().items()}
        return {m: self.heads[m](p) for m, p in pooled.items()}, output


class ChannelMeansStep:
    def __init__(self, config: RunConfig, device, dtype) -> None:
        self.img_size, self.aux = config.model.img_size, config.model.aux_loss_coef
        self.device, self.dtype = device, dtype

    def forward(self, engine, batch):
        check_tile_size(batch.images, self.img_size)
        batch = batch.to(self.device, self.dtype)
        predictions, output = engine(batch)
        errors = {m: F.mse_loss(p, batch.images[m].mean(dim=(2, 3))) for m, p in predictions.items()}
        loss = torch.stack(list(errors.values())).mean() + self.aux * output.aux_loss
        return loss, {f"loss/means/{m}": float(e.detach()) for m, e in errors.items()}, output

    def samples(self, batch) -> int:
        return sum(batch.sizes().values())

    def after_optimizer_step(self, engine, step: int) -> None:
        pass


@register
class ToyChannelMeans(Recipe):
    name = "toy_channel_means"
    hf = RingMoESimMIMRecipe.hf  # it releases a RingMoE encoder: the same HuggingFace model

    def validate(self, config: RunConfig) -> None:
        if config.objective.views.weight:
            raise ConfigError("the toy_channel_means recipe has no view contrast (objective.views.weight: 0)")

    def build_model(self, config: ModelConfig) -> ChannelMeans:
        return ChannelMeans(config)

    def build_step(self, config: RunConfig, prepared, generator, device, dtype, data_group) -> ChannelMeansStep:
        return ChannelMeansStep(config, device, dtype)

    def hf_config(self, config: ModelConfig) -> dict:
        return RingMoESimMIMRecipe().hf_config(config)

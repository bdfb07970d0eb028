"""The micro-batch step every recipe provides, and the checks steps share."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ringmoe.core.errors import ConfigError


class Step(Protocol):
    """What one micro-batch does between the loader and ``engine.backward``."""

    def forward(self, engine, batch) -> tuple[torch.Tensor, dict[str, float], Any]:
        """(loss, metrics, model output) of one micro-batch."""

    def samples(self, batch) -> int:
        """Samples of ``batch`` on this rank (for throughput)."""

    def after_optimizer_step(self, engine, step: int) -> None:
        """After every optimizer step (e.g. an EMA teacher's update)."""


def check_tile_size(images: dict[str, torch.Tensor], img_size: int) -> None:
    for modality, tensor in images.items():
        if tuple(tensor.shape[-2:]) != (img_size, img_size):
            raise ConfigError(
                f"data: {modality} tiles are {tuple(tensor.shape[-2:])}, model.img_size is {img_size}; "
                "rebuild the shards with a matching tile_size or change model.img_size"
            )

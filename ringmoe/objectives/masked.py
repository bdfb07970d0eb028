"""Losses over the masked pixels only (SimMIM): visible pixels carry no signal about what the model learned."""

from __future__ import annotations

import torch


def masked_mean(loss_map: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``loss_map`` ``(B, C, H, W)`` over masked pixels and channels; ``pixel_mask`` is (B, 1, H, W) 0/1."""
    return (loss_map * pixel_mask).sum() / (pixel_mask.sum() * loss_map.shape[1]).clamp(min=1.0)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over masked pixels only."""
    return masked_mean((prediction - target).abs(), pixel_mask)

"""Masked-image pretraining of one ConvNeXt V2 specialist (FCMAE-style, dense): random ``mask_patch`` squares
of the input are zeroed, a light decoder (1x1 conv + pixel shuffle from the last stage) reconstructs the
image, and the loss is the mean squared error on the masked pixels only. Deterministic for a seed.

The paper's FCMAE uses sparse convolutions so masked patches cost nothing; here they are zeros in a dense
network (the same function, more compute), which CPU tests can afford.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.models.convnextv2 import ConvNeXtV2


class MaskedReconstruction(nn.Module):
    def __init__(self, encoder: ConvNeXtV2, in_chans: int, stride: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        self.stride = stride
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, stride * stride * in_chans, 1), nn.PixelShuffle(stride)
        )

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` (B, 1, H, W) 1 where hidden; returns the masked-pixel MSE."""
        reconstruction = self.decoder(self.encoder.forward_features(images * (1 - mask))[-1])
        error = (reconstruction - images).pow(2) * mask
        return error.sum() / (mask.sum() * images.shape[1]).clamp(min=1)


def random_masks(batch: int, size: int, patch: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, size, size) with round(ratio x patches) of the ``patch`` squares set to 1 in each image."""
    cells = (size // patch) ** 2
    hidden = round(ratio * cells)
    order = torch.stack([torch.randperm(cells, generator=generator) for _ in range(batch)])
    flat = torch.zeros(batch, cells).scatter_(1, order[:, :hidden], 1.0)
    grid = flat.view(batch, 1, size // patch, size // patch)
    return F.interpolate(grid, scale_factor=patch, mode="nearest")


def pretrain_specialist(
    encoder: ConvNeXtV2,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    mask_ratio: float = 0.6,
    mask_patch: int = 8,
    seed: int = 0,
) -> list[float]:
    """Train ``encoder`` in place on ``images`` (N, C, H, W); the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    model = MaskedReconstruction(encoder, images.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    losses = []
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch = images[pick]
        mask = random_masks(len(batch), batch.shape[-1], mask_patch, mask_ratio, generator)
        loss = model(batch, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses

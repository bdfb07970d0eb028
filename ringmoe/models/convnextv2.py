"""A small ConvNeXt V2 encoder (Woo et al. 2023), the lightweight specialist of the Ensemble-of-Specialists recipe.

Stem: 4x4 stride-4 conv + LayerNorm; per stage a 2x2 stride-2 downsampling (after the first) and blocks of
depthwise 7x7 conv -> LayerNorm -> 1x1 expansion (4x) -> GELU -> global response normalization -> 1x1
projection, with a residual. Written here (timm needs torchvision, which does not import beside this torch);
the named sizes follow the paper's and timm's variants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
}


class GlobalResponseNorm(nn.Module):
    """x + gamma * (x * N(x)) + beta on channels-last maps, N(x) = ||x||_spatial / mean_channels ||x||_spatial:
    channels compete, which keeps them diverse. Starts as the identity (gamma = beta = 0)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        spatial = x.norm(p=2, dim=(1, 2), keepdim=True)
        relative = spatial / (spatial.mean(dim=-1, keepdim=True) + self.eps)
        return x + self.gamma * (x * relative) + self.beta


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """``forward_features(x)`` -> every stage's map (finest first); ``forward(x)`` -> pooled features, or class
    logits when ``num_classes`` > 0."""

    def __init__(self, in_chans: int, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int = 0) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} differ in length")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.downsamples = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2))
            for i in range(1, len(dims))
        )
        self.stages = nn.ModuleList(nn.Sequential(*(Block(d) for _ in range(n))) for n, d in zip(depths, dims))
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else None
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            if index:
                x = self.downsamples[index - 1](x)
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(self.forward_features(x)[-1].mean(dim=(2, 3)))
        return self.head(pooled) if self.head is not None else pooled


def feature_width(variant: str) -> int:
    """Width of a variant's pooled features (its last stage)."""
    return VARIANTS[variant][1][-1]


def convnextv2(variant: str, in_chans: int, num_classes: int = 0) -> ConvNeXtV2:
    if variant not in VARIANTS:
        raise ValueError(f"ConvNeXt V2 variant {variant!r} not in {sorted(VARIANTS)}")
    depths, dims = VARIANTS[variant]
    return ConvNeXtV2(in_chans, depths, dims, num_classes)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

"""SwinV2 building blocks: scaled cosine window attention with a log-spaced continuous position bias,
post-norm residual blocks with shifted windows, and patch merging."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.core.batch import RouterStats
from ringmoe.models.moe import HierarchicalMoE


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _log_spaced_coords(window: int) -> torch.Tensor:
    """Relative coordinates of a window, normalised to [-8, 8] and log-spaced (SwinV2 eq. 4)."""
    span = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(span, span, indexing="ij"), dim=-1)
    if window > 1:
        table = table / (window - 1)
    table = table * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def _relative_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative = relative + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


class WindowAttention(nn.Module):
    """Scaled cosine attention inside windows, with a continuous relative position bias from a small MLP."""

    def __init__(self, dim: int, num_heads: int, window: int, cpb_hidden: int = 512) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden), nn.ReLU(inplace=True), nn.Linear(cpb_hidden, num_heads, bias=False)
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Persistent so that loaders which build the model on the meta device (transformers) restore them.
        self.register_buffer("coords_table", _log_spaced_coords(window))
        self.register_buffer("relative_index", _relative_index(window))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        windows, tokens, _ = x.shape
        # Head width and output width are inferred, so a tensor-parallel swap that keeps a slice of the heads
        # (``num_heads`` local, qkv column-split, proj row-split) runs this same code.
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        # Buffers stay float32 when an engine casts only the parameters to bf16/fp16: follow the weights.
        bias_table = self.cpb_mlp(self.coords_table.to(self.qkv.weight.dtype)).view(-1, self.num_heads)
        bias = bias_table[self.relative_index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)
        attn = attn + 16 * torch.sigmoid(bias).unsqueeze(0)
        if mask is not None:
            groups = mask.shape[0]
            attn = attn.view(windows // groups, groups, self.num_heads, tokens, tokens) + mask[None, :, None].to(
                attn.dtype
            )
            attn = attn.view(windows, self.num_heads, tokens, tokens)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, -1))


def _shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask that stops attention across the seams created by the cyclic shift."""
    region = torch.zeros(1, h, w, 1)
    label = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[:, hs, ws, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SwinBlock(nn.Module):
    """Post-norm SwinV2 block whose FFN is the hierarchical MoE."""

    def __init__(
        self, dim: int, num_heads: int, resolution: int, window: int, shift: bool, ffn: HierarchicalMoE
    ) -> None:
        super().__init__()
        self.window = min(window, resolution)
        self.shift = self.window // 2 if shift and resolution > window else 0
        self.attn = WindowAttention(dim, num_heads, self.window)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = ffn
        self.norm2 = nn.LayerNorm(dim)
        mask = _shift_mask(resolution, resolution, self.window, self.shift) if self.shift else None
        self.register_buffer("attn_mask", mask)

    def forward(
        self, x: torch.Tensor, modality_sizes: dict[str, int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[RouterStats]]:
        _, h, w, _ = x.shape
        shifted = torch.roll(x, (-self.shift, -self.shift), (1, 2)) if self.shift else x
        windows = self.attn(window_partition(shifted, self.window), self.attn_mask)
        shifted = window_reverse(windows, self.window, h, w)
        attended = torch.roll(shifted, (self.shift, self.shift), (1, 2)) if self.shift else shifted
        x = x + self.norm1(attended)
        ffn_out, aux_loss, stats = self.ffn(x, modality_sizes)
        return x + self.norm2(ffn_out), aux_loss, stats


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> linear reduction to 2C -> LayerNorm (SwinV2 order)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x))

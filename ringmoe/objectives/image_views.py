"""Two augmented views of single images for the view contrast of the RingMoE recipe (SimCLR-style).

Views are drawn on the CPU from the recipe generator, so a resumed run draws exactly what an uninterrupted one
would. Geometry: a random resized crop, then one of the 8 flips/rotations by 90 degrees (overhead imagery has no
up), in one bilinear resampling. Photometry: a per-channel gain and offset; complex SAR gets one real gain per
image, since a per-channel change would alter the phase between I and Q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

# The dihedral group of the square: 4 rotations, each with and without a flip, as 2x2 matrices.
_DIHEDRAL = torch.tensor(
    [[[c, -s], [s, c]] for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))]
    + [[[-c, s], [s, c]] for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))],
    dtype=torch.float32,
)


@dataclass
class ViewAugmentation:
    crop_scale: tuple[float, float] = (0.25, 1.0)  # fraction of the image's area a crop covers
    gain: float = 0.2
    aspect: tuple[float, float] = (3 / 4, 4 / 3)

    def geometry(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 2, 3) affine maps from output to input coordinates (``F.affine_grid``'s convention)."""
        low, high = self.crop_scale
        area = low + (high - low) * torch.rand(batch_size, generator=generator)
        log_aspect = math.log(self.aspect[0]) + (math.log(self.aspect[1]) - math.log(self.aspect[0])) * torch.rand(
            batch_size, generator=generator
        )
        width = (area * log_aspect.exp()).sqrt().clamp(max=1.0)
        height = (area / log_aspect.exp()).sqrt().clamp(max=1.0)
        centre = (torch.rand(batch_size, 2, generator=generator) * 2 - 1) * (1 - torch.stack([width, height], 1))
        turn = _DIHEDRAL[torch.randint(len(_DIHEDRAL), (batch_size,), generator=generator)]
        linear = torch.diag_embed(torch.stack([width, height], dim=1)) @ turn
        return torch.cat([linear, centre.unsqueeze(-1)], dim=2)

    def __call__(self, images: torch.Tensor, generator: torch.Generator, complex_valued: bool = False) -> torch.Tensor:
        """One augmented view of ``images`` (B, C, H, W), same shape and dtype."""
        b, c = images.shape[:2]
        theta = self.geometry(b, generator)
        gain = 1 + (torch.rand(b, 1 if complex_valued else c, 1, 1, generator=generator) * 2 - 1) * self.gain
        offset = (torch.rand(b, c, 1, 1, generator=generator) * 2 - 1) * self.gain
        x = images.float()
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        view = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False) * gain
        if not complex_valued:
            view = view + offset * x.std(dim=(2, 3), keepdim=True)
        return view.to(images.dtype)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows of a tensor, concatenated in rank order, differentiable: each rank's rows get the gradient
    every rank's loss sends them (an all-reduce of the full gradient, then this rank's slice)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), len(tensor)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float, group=None) -> torch.Tensor:
    """SimCLR's loss: row i of ``first`` (N, D) is positive with row i of ``second``; the other rows of both are
    its negatives; symmetric over the two views. With a process ``group`` of data-parallel ranks (each holding
    as many rows), the negatives are every rank's rows, as in SimCLR's global batch."""
    n = len(first)
    dtype = torch.promote_types(first.dtype, torch.float32)  # bf16 projections: the softmax in fp32
    queries = F.normalize(torch.cat([first, second]).to(dtype), dim=1)
    keys, offset = queries, 0
    if group is not None and dist.get_world_size(group) > 1:
        keys = torch.cat([_GatherRows.apply(first, group), _GatherRows.apply(second, group)])
        keys, offset = F.normalize(keys.to(dtype), dim=1), dist.get_rank(group) * n
    total = len(keys) // 2
    own = torch.arange(n, device=queries.device) + offset
    self_column = torch.cat([own, own + total])
    logits = (queries @ keys.T / temperature).masked_fill(
        torch.nn.functional.one_hot(self_column, 2 * total).bool(), -torch.inf
    )
    return F.cross_entropy(logits, torch.cat([own + total, own]))

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


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: row i of ``first`` (N, D) is positive with row i of ``second``; the other 2N - 2 rows of
    both are its negatives; symmetric over the two views."""
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    n = len(first)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -torch.inf)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)

"""SimMIM: random block masks and an L1 loss on masked pixels only, per modality.

Masks are drawn in the training step from a seeded generator, never stored in shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ringmoe.core.batch import ModelOutput, MultiModalBatch


class MaskGenerator:
    """Hides ``ratio`` of the ``mask_patch`` x ``mask_patch`` pixel blocks of each image.

    Returns masks at patch-embedding resolution (what the encoder consumes); ``to_pixels`` upsamples them.
    """

    def __init__(self, img_size: int, mask_patch: int, model_patch: int, ratio: float) -> None:
        self.blocks_per_side = img_size // mask_patch
        self.scale = mask_patch // model_patch
        self.pixel_scale = model_patch
        self.num_masked = int(round(ratio * self.blocks_per_side**2))

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        count = self.blocks_per_side**2
        order = torch.rand(batch_size, count, generator=generator).argsort(dim=1)
        block_mask = torch.zeros(batch_size, count)
        block_mask.scatter_(1, order[:, : self.num_masked], 1.0)
        block_mask = block_mask.view(batch_size, self.blocks_per_side, self.blocks_per_side)
        return block_mask.repeat_interleave(self.scale, 1).repeat_interleave(self.scale, 2)

    def for_batch(self, batch: MultiModalBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {m: self(n, generator) for m, n in batch.sizes().items()}

    def to_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        s = self.pixel_scale
        return mask.repeat_interleave(s, 1).repeat_interleave(s, 2).unsqueeze(1)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over masked pixels only; ``pixel_mask`` is (B, 1, H, W) of 0/1."""
    error = (prediction - target).abs() * pixel_mask
    return error.sum() / (pixel_mask.sum() * prediction.shape[1]).clamp(min=1.0)


@dataclass
class SimMIMLoss:
    """Equal-weighted mean of per-modality masked L1, plus the weighted MoE load-balancing loss."""

    masks: MaskGenerator
    aux_loss_coef: float
    router_z_loss_coef: float = 0.0

    def __call__(
        self,
        batch: MultiModalBatch,
        reconstructions: dict[str, torch.Tensor],
        output: ModelOutput,
        masks: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        per_modality = {
            m: masked_l1(reconstructions[m], batch.images[m], self.masks.to_pixels(masks[m]).to(batch.images[m]))
            for m in reconstructions
        }
        reconstruction = torch.stack(list(per_modality.values())).mean()
        total = reconstruction + self.aux_loss_coef * output.aux_loss
        if output.z_loss is not None:
            total = total + self.router_z_loss_coef * output.z_loss
        metrics = {f"loss/{m}": float(v.detach()) for m, v in per_modality.items()}
        metrics["loss/reconstruction"] = float(reconstruction.detach())
        metrics["loss/aux"] = float(output.aux_loss.detach())
        if output.z_loss is not None:
            metrics["loss/router_z"] = float(output.z_loss.detach())
        return total, metrics

"""SimMIM: random block masks and, per modality, losses on the masked pixels only.

Masks (and the physical targets of ``sar_complex``/``spectral``) are computed in the training step from a
seeded generator and the batch itself, never stored in shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ringmoe.core.batch import ModelOutput, MultiModalBatch
from ringmoe.objectives.masked import masked_l1


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


class ModalityTerms(Protocol):
    """One modality's loss terms: ``"reconstruction"`` plus one entry per physical target it predicts (in the
    decoder's channels after the reconstructed ones); targets are weighted by ``target_weight``."""

    extra_channels: int
    target_weight: float

    def __call__(
        self, image: torch.Tensor, prediction: torch.Tensor, pixel_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...


def block_standardized(image: torch.Tensor, block: int) -> torch.Tensor:
    """``image`` (B, C, H, W) with each ``block`` x ``block`` cell standardized per channel (MAE's normalized
    pixel target: the decoder predicts texture and contrast, not the cell's mean brightness)."""
    b, c, h, w = image.shape
    cells = image.reshape(b, c, h // block, block, w // block, block)
    mean = cells.mean(dim=(3, 5), keepdim=True)
    std = cells.var(dim=(3, 5), keepdim=True, unbiased=False).add(1e-6).sqrt()
    return ((cells - mean) / std).reshape(b, c, h, w)


@dataclass
class Reconstruction:
    """Plain SimMIM: L1 on the input channels; with ``normalize_block`` > 0, on the input standardized in cells
    of that size."""

    extra_channels: int = 0
    target_weight: float = 0.0
    normalize_block: int = 0

    def __call__(self, image: torch.Tensor, prediction: torch.Tensor, pixel_mask: torch.Tensor):
        target = block_standardized(image, self.normalize_block) if self.normalize_block else image
        return {"reconstruction": masked_l1(prediction[:, : image.shape[1]], target, pixel_mask)}


@dataclass
class SimMIMLoss:
    """Weighted mean over modalities of (reconstruction + target_weight x physical targets), plus the weighted
    MoE load-balancing and router z-losses.

    ``terms``: per modality (missing: ``plain``, a ``Reconstruction``); ``modality_weights``: missing means 1.0,
    so modalities count equally by default; ``reconstruction_weight`` scales all of it but the router losses.
    Metrics: ``loss/<modality>`` (reconstruction), ``loss/<modality>/<target>``, ``loss/reconstruction`` and
    ``loss/physics`` (weighted means).
    """

    masks: MaskGenerator
    aux_loss_coef: float
    router_z_loss_coef: float = 0.0
    terms: dict[str, ModalityTerms] = field(default_factory=dict)
    modality_weights: dict[str, float] = field(default_factory=dict)
    reconstruction_weight: float = 1.0
    plain: Reconstruction = field(default_factory=Reconstruction)

    def __call__(
        self,
        batch: MultiModalBatch,
        reconstructions: dict[str, torch.Tensor],
        output: ModelOutput,
        masks: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        metrics: dict[str, float] = {}
        reconstruction, physics, weights = [], [], []
        for modality, prediction in reconstructions.items():
            image = batch.images[modality]
            pixel_mask = self.masks.to_pixels(masks[modality]).to(image)
            modality_terms = self.terms.get(modality, self.plain)
            values = modality_terms(image, prediction, pixel_mask)
            weight = self.modality_weights.get(modality, 1.0)
            rec = values.pop("reconstruction")
            metrics[f"loss/{modality}"] = float(rec.detach())
            for name, value in values.items():
                metrics[f"loss/{modality}/{name}"] = float(value.detach())
            targets = torch.stack(list(values.values())).sum() if values else rec.new_zeros(())
            reconstruction.append(weight * rec)
            physics.append(weight * modality_terms.target_weight * targets)
            weights.append(weight)
        norm = max(sum(weights), 1e-12)
        reconstruction_loss = torch.stack(reconstruction).sum() / norm
        physics_loss = torch.stack(physics).sum() / norm
        total = self.reconstruction_weight * (reconstruction_loss + physics_loss) + self.aux_loss_coef * output.aux_loss
        if output.z_loss is not None:
            total = total + self.router_z_loss_coef * output.z_loss
        metrics["loss/reconstruction"] = float(reconstruction_loss.detach())
        metrics["loss/physics"] = float(physics_loss.detach())
        metrics["loss/aux"] = float(output.aux_loss.detach())
        if output.z_loss is not None:
            metrics["loss/router_z"] = float(output.z_loss.detach())
        return total, metrics

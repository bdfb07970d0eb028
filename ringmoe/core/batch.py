"""Batch and output types passed between the data loader, the model and the objectives.

A ``MultiModalBatch`` holds one image tensor per modality group; the model embeds each with its own patch
embedding and stacks them on the batch axis, so one step sees every modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ringmoe.core.modalities import MODALITIES

__all__ = ["MODALITIES", "ModelOutput", "MultiModalBatch", "RouterStats", "SequenceBatch"]


@dataclass
class MultiModalBatch:
    """Images per modality, each ``(B_m, C_m, H, W)`` float32, plus the per-sample metadata keys.

    ``quarantined``: one record (shard, key, problem, detail) per unreadable sample the loader replaced while
    making this batch; it carries them from the loader's worker processes to its report.
    """

    images: dict[str, torch.Tensor]
    keys: dict[str, list[str]] = field(default_factory=dict)
    quarantined: list[dict[str, str]] = field(default_factory=list)

    def modalities(self) -> list[str]:
        """Modalities present, in the canonical stacking order."""
        return [m for m in MODALITIES if m in self.images]

    def sizes(self) -> dict[str, int]:
        return {m: int(self.images[m].shape[0]) for m in self.modalities()}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "MultiModalBatch":
        images = {m: t.to(device=device, dtype=dtype) for m, t in self.images.items()}
        return MultiModalBatch(images, dict(self.keys), list(self.quarantined))


@dataclass
class RouterStats:
    """Routing statistics of one router in one block, for logging and pruning.

    ``tokens``: tokens routed to each expert before capacity dropping; ``gate_mass``: summed gate probability
    per expert; ``dropped``: tokens per expert dropped by the capacity limit.
    """

    name: str
    tokens: torch.Tensor
    gate_mass: torch.Tensor
    dropped: torch.Tensor


@dataclass
class ModelOutput:
    """What ``forward_features`` returns.

    ``features``: final-stage feature map ``(B, C, h, w)`` with modalities stacked on the batch axis in
    ``modality_sizes`` order; ``aux_loss``: summed load-balancing loss of all routers (unweighted);
    ``router_stats``: one entry per router per block; ``stage_features``: every stage's output map
    ``(B, C_s, h_s, w_s)``, finest first, the last one ``features`` (multi-scale heads such as segmentation
    decoders read them); ``projections``: the pretraining model's projection head output for a view contrast.
    """

    features: torch.Tensor
    modality_sizes: dict[str, int]
    aux_loss: torch.Tensor
    z_loss: torch.Tensor | None = None  # summed router z-losses (unweighted)
    router_stats: list[RouterStats] = field(default_factory=list)
    stage_features: list[torch.Tensor] = field(default_factory=list)
    projections: torch.Tensor | None = None  # (B, D) contrastive projections of the pooled features, if any

    def split(self) -> dict[str, torch.Tensor]:
        """Features per modality, undoing the batch-axis stacking."""
        parts = torch.split(self.features, list(self.modality_sizes.values()), dim=0)
        return dict(zip(self.modality_sizes.keys(), parts))


@dataclass
class SequenceBatch:
    """Multi-modal image sequences of the same places (SkySense-style inputs).

    Per modality: ``images`` ``(B, T_m, C, H, W)`` with a fixed ``T_m`` (dates beyond a sample's own are
    padding), ``present`` ``(B, T_m)`` bool (False: padding, or the modality is missing for that sample) and
    ``days`` ``(B, T_m)`` float acquisition times in days since 1970-01-01 (the fraction is the time of day).
    ``location``: ``(B, 2)`` longitude, latitude of each place (degrees).
    """

    images: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    days: dict[str, torch.Tensor]
    location: torch.Tensor
    keys: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)  # as in MultiModalBatch

    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.images]

    def sizes(self) -> dict[str, int]:
        return {m: int(self.images[m].shape[0]) for m in self.modalities()}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SequenceBatch":
        return SequenceBatch(
            {m: t.to(device=device, dtype=dtype) for m, t in self.images.items()},
            {m: t.to(device) for m, t in self.present.items()},
            {m: t.to(device) for m, t in self.days.items()},
            self.location.to(device),
            self.keys,
            self.quarantined,
        )

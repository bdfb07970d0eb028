"""Two augmented views of a sequence batch for teacher-student learning. Only photometric and temporal changes:
the views stay pixel-aligned, so the pixel- and object-level losses can pair positions directly."""

from __future__ import annotations

import torch

from ringmoe.core.batch import SequenceBatch


def augmented_view(
    batch: SequenceBatch, generator: torch.Generator, gain: float = 0.1, noise: float = 0.02, drop_date: float = 0.3
) -> SequenceBatch:
    """Per sample and channel a gain in ``[1 - gain, 1 + gain]``, Gaussian noise of std ``noise``, and each
    present date dropped with probability ``drop_date`` (never a sample's last one of a modality)."""
    images, present = {}, {}
    for modality, x in batch.images.items():
        b, t, c = x.shape[:3]
        scale = 1 + (torch.rand(b, 1, c, 1, 1, generator=generator) * 2 - 1) * gain
        jitter = torch.randn(x.shape, generator=generator) * noise
        images[modality] = x * scale.to(x) + jitter.to(x)
        keep = batch.present[modality] & (torch.rand(b, t, generator=generator) >= drop_date).to(x.device)
        # A sample that had the modality keeps at least its first present date.
        first = torch.zeros_like(keep).scatter_(1, batch.present[modality].float().argmax(dim=1, keepdim=True), True)
        had = batch.present[modality].any(dim=1, keepdim=True)
        present[modality] = keep | (first & had & ~keep.any(dim=1, keepdim=True))
    return SequenceBatch(images, present, batch.days, batch.location, batch.keys)

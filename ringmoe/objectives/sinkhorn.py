"""Sinkhorn-Knopp: soft assignments of samples to prototypes with every prototype used equally (the
equipartition constraint of SwAV), which keeps prototype learning from collapsing onto a few prototypes."""

from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """``scores`` (N, K) similarities -> assignments (N, K): each row sums to 1 and each prototype receives
    N / K in total. Alternately normalizes the rows and columns of ``exp(scores / epsilon)``; 3 iterations is
    SwAV's. Geo-context prototypes call it per cell on each rank's samples (cells differ between ranks)."""
    # Subtracting the max changes nothing after normalization and keeps exp() finite.
    q = torch.exp((scores.double() - scores.max()) / epsilon).T  # (K, N)
    prototypes, samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / prototypes  # every prototype: total mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / samples  # every sample: total mass 1/N
    return (q * samples).T.to(scores.dtype)

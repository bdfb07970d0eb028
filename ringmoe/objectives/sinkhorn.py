"""Sinkhorn-Knopp: soft assignments of samples to prototypes with every prototype used equally (the
equipartition constraint of SwAV), which keeps prototype learning from collapsing onto a few prototypes."""

from __future__ import annotations

import torch
import torch.distributed as dist


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, group=None) -> torch.Tensor:
    """``scores`` (N, K) similarities -> assignments (N, K): each row sums to 1, and over all samples (all ranks
    of ``group`` when distributed) each prototype receives N_total / K.

    Alternately normalizes the rows and columns of ``exp(scores / epsilon)``; ``iterations`` of 3 is SwAV's.
    """
    distributed = group is not None and dist.is_initialized()
    # Subtracting the global max changes nothing after normalization and keeps exp() finite.
    peak = scores.max().clone()
    if distributed:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    q = torch.exp((scores.double() - peak) / epsilon).T  # (K, N)
    samples = torch.tensor(float(q.shape[1]), dtype=torch.float64, device=q.device)
    total = q.sum()
    if distributed:
        dist.all_reduce(samples, group=group)
        dist.all_reduce(total, group=group)
    q = q / total
    prototypes = q.shape[0]
    for _ in range(iterations):
        per_prototype = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(per_prototype, group=group)
        q = q / per_prototype / prototypes  # every prototype: total mass 1/K
        q = q / q.sum(dim=0, keepdim=True) / samples  # every sample: total mass 1/N
    return (q * samples).T.to(scores.dtype)

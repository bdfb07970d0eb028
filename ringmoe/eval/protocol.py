"""The fixed-split protocol of published benchmarks (EuroSAT, GEO-Bench): probes train on a stratified, seeded
fraction of ``train`` and report on ``test``; each score comes with a bootstrap confidence interval over the test
images (the uncertainty of a score on a finite test set)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def label_fraction(labels: torch.Tensor, candidates: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indexes of ``fraction`` of ``candidates`` taken per class (stratified), at least one of every class, in
    a seeded order; the same fraction and seed always give the same subset, and a smaller fraction's subset is
    contained in a larger one's."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels[candidates].unique(sorted=True):
        members = candidates[labels[candidates] == label]
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[: max(1, math.ceil(fraction * len(members)))])
    return torch.cat(chosen).sort().values


@dataclass
class Interval:
    score: float  # on the whole test set
    low: float  # percentile bootstrap interval
    high: float
    std: float  # of the bootstrap scores


def bootstrap_interval(
    predicted: torch.Tensor,
    target: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], float],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``score(predicted, target)`` with the percentile interval of ``resamples`` resamplings of the test images
    (with replacement, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(target)
    draws = torch.tensor(
        [score(predicted[i], target[i]) for i in torch.randint(n, (resamples, n), generator=generator)],
        dtype=torch.float64,
    )
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(draws, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return Interval(score(predicted, target), low, high, float(draws.std(unbiased=False)))

"""The fixed-split protocol of published benchmarks (EuroSAT, GEO-Bench): probes train on a stratified, seeded
fraction of ``train`` and report on ``test``; each score comes with a bootstrap confidence interval over the test
images (the uncertainty of a score on a finite test set), and the difference of two encoders' scores with a
paired one (both scored on the same resamples, so what the two share cancels out)."""

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


def _resamples(n: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, n) indexes of the test images drawn with replacement; the same seed gives the same draws, so
    an encoder's interval and its paired differences come from one set of resamples."""
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def _interval(score: float, draws: list[float], confidence: float) -> Interval:
    values = torch.tensor(draws, dtype=torch.float64)
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return Interval(score, low, high, float(values.std(unbiased=False)))


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
    draws = [score(predicted[i], target[i]) for i in _resamples(len(target), resamples, seed)]
    return _interval(score(predicted, target), draws, confidence)


def paired_bootstrap_interval(
    predicted: torch.Tensor,
    reference: torch.Tensor,
    target: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], float],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``score(predicted) - score(reference)`` on the same test images, with the percentile interval of the
    difference over resamplings that score both on the same draw. Images both get right (or both get wrong)
    move both scores together, so the interval is that of the images where they disagree: much narrower than
    two separate intervals, which also carry the variation the two encoders share."""
    if not predicted.shape == reference.shape == target.shape:
        raise ValueError(
            f"paired scores need one prediction per test image from both: got {tuple(predicted.shape)}, "
            f"{tuple(reference.shape)} for {tuple(target.shape)} targets"
        )
    draws = [
        score(predicted[i], target[i]) - score(reference[i], target[i])
        for i in _resamples(len(target), resamples, seed)
    ]
    return _interval(score(predicted, target) - score(reference, target), draws, confidence)

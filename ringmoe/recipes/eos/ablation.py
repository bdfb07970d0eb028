"""Pruning an ensemble by ablation: repeatedly drop the specialist whose removal costs the least validation
score, and report size against quality at every step (the caller decides where to stop)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AblationStep:
    kept: tuple[str, ...]
    score: float  # of the ensemble of ``kept`` on the validation set
    parameters: int  # of the kept specialists
    removed: str = ""  # the specialist dropped to get here ("" for the full ensemble)


def ablation_path(
    specialists: Sequence[str], parameters: dict[str, int], score: Callable[[tuple[str, ...]], float]
) -> list[AblationStep]:
    """Greedy backward elimination down to one specialist. ``score(kept)`` must be deterministic; ties are
    broken by name so the path repeats."""
    kept = tuple(sorted(specialists))
    path = [AblationStep(kept, score(kept), sum(parameters[n] for n in kept))]
    while len(kept) > 1:
        trials = []
        for name in kept:
            rest = tuple(n for n in kept if n != name)
            trials.append((-score(rest), name, rest))
        best_loss, removed, kept = min(trials)
        path.append(AblationStep(kept, -best_loss, sum(parameters[n] for n in kept), removed))
    return path

"""Results of an evaluation as a table (markdown for people, JSON for tools) and plots as PNGs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ringmoe.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ringmoe.train.callbacks import heatmap_png


@dataclass
class Result:
    task: str  # e.g. "bigearthnet multi-label (linear probe)"
    encoder: str  # FrozenEncoder.name
    metric: str  # e.g. "mAP"
    mean: float  # over cross-validation folds, or the score on a fixed test split
    std: float  # over folds, or of the bootstrap scores on a fixed split
    n: int  # labelled samples scored
    folds: int  # 0: a fixed test split, scored with a bootstrap interval
    chance: float  # the score of guessing (majority class, or label frequency for mAP)
    low: Optional[float] = None  # the bootstrap confidence interval, on a fixed split
    high: Optional[float] = None

    def score_text(self) -> str:
        if self.folds:
            return f"{self.mean:.3f} ± {self.std:.3f}"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def write_results(results: list[Result], out_dir: Path, notes: Sequence[str] = ()) -> Path:
    """``results.json`` and ``results.md``: one row per task, encoder and metric, with n and chance beside the
    score so that a small set's numbers read for what they are; ``notes`` (skipped baselines, samples left out)
    follow the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", {"results": [asdict(r) for r in results], "notes": list(notes)})
    score = "score (mean ± std over folds, or [confidence interval] on test)"
    lines = [f"| task | encoder | metric | {score} | chance | n | folds |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r.task} | {r.encoder} | {r.metric} | {r.score_text()} | {r.chance:.3f} | {r.n} | {r.folds or 'test'} |"
        for r in results
    ]
    lines += [""] + [f"- {note}" for note in notes] if notes else []
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return out_dir / "results.md"


def confusion_png(confusion: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Row-normalized confusion matrix (true class per row), labelled by class."""
    support = confusion.sum(dim=1, keepdim=True).clamp(min=1)
    atomic_write_bytes(path, heatmap_png(confusion.double() / support, class_names, cell=16))
    return path

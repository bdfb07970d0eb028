"""Results of an evaluation as a table (markdown for people, JSON for tools) and plots as PNGs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ringmoe.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ringmoe.core.plots import heatmap_png
from ringmoe.eval.protocol import Interval


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
    # On a fixed split: reference encoder name -> this score minus the reference's, paired bootstrap interval.
    differences: dict[str, Interval] = field(default_factory=dict)

    def score_text(self) -> str:
        if self.folds:
            return f"{self.mean:.3f} ± {self.std:.3f}"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def difference_text(self, reference: str) -> str:
        if reference not in self.differences:
            return ""
        d = self.differences[reference]
        return f"{_signed(d.score)} [{_signed(d.low)}, {_signed(d.high)}]"


def _signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: a quantile's -1e-17 prints as +0.000, not -0.000


def write_results(results: list[Result], out_dir: Path, notes: Sequence[str] = ()) -> Path:
    """``results.json`` and ``results.md``: one row per task, encoder and metric, with n and chance beside the
    score so that a small set's numbers read for what they are, and one "Δ <reference>" column per reference
    encoder when fixed-split rows carry paired differences; ``notes`` (skipped baselines, samples left out)
    follow the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", {"results": [asdict(r) for r in results], "notes": list(notes)})
    references = list(dict.fromkeys(name for r in results for name in r.differences))
    score = "score (mean ± std over folds, or [confidence interval] on test)"
    header = ["task", "encoder", "metric", score, "chance", "n", "folds"] + [f"Δ {name}" for name in references]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.task, r.encoder, r.metric, r.score_text(), f"{r.chance:.3f}", str(r.n), str(r.folds or "test")]
        lines.append("| " + " | ".join(cells + [r.difference_text(name) for name in references]) + " |")
    if references:
        notes = [
            "Δ <reference>: this score minus the reference encoder's on the same test images, with a paired "
            "bootstrap interval (both scored on each resample)",
            *notes,
        ]
    lines += [""] + [f"- {note}" for note in notes] if notes else []
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return out_dir / "results.md"


def confusion_png(confusion: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Row-normalized confusion matrix (true class per row), labelled by class."""
    support = confusion.sum(dim=1, keepdim=True).clamp(min=1)
    atomic_write_bytes(path, heatmap_png(confusion.double() / support, class_names, cell=16))
    return path

"""Scores of the evaluation tasks, written out so each can be checked against a hand computation.

- scene classification: accuracy, balanced accuracy, confusion matrix;
- multi-label classification: average precision per class and its mean (mAP), as in BigEarthNet papers
  (ranking-based AP, the mean over classes with at least one positive);
- segmentation and change detection: per-class IoU and F1 from the confusion matrix, with an ignored label.
"""

from __future__ import annotations

import torch


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, classes: int, ignore_index: int | None = None):
    """``[true, predicted]`` counts (int64) over all elements; elements whose target is ``ignore_index`` are
    left out."""
    predicted, target = predicted.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        predicted, target = predicted[keep], target[keep]
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= classes or int(predicted.max()) >= classes):
        raise ValueError(f"labels must be in [0, {classes}); got targets {target.unique().tolist()[:8]}")
    return torch.bincount(target * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def accuracy(confusion: torch.Tensor) -> float:
    total = int(confusion.sum())
    return float(confusion.diag().sum()) / total if total else float("nan")


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean recall over the classes present in the targets."""
    support = confusion.sum(dim=1)
    present = support > 0
    return float((confusion.diag()[present].double() / support[present]).mean()) if present.any() else float("nan")


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """TP / (TP + FP + FN) per class; NaN for a class absent from both targets and predictions."""
    tp = confusion.diag().double()
    union = confusion.sum(dim=0).double() + confusion.sum(dim=1).double() - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def f1_per_class(confusion: torch.Tensor) -> torch.Tensor:
    tp = confusion.diag().double()
    denominator = confusion.sum(dim=0).double() + confusion.sum(dim=1).double()
    return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.full_like(tp, float("nan")))


def nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Ranking average precision of one class: the mean, over the positives, of the precision among the samples
    ranked at or above each positive (ties broken by sample order). NaN without positives."""
    target = target.reshape(-1).bool()
    positives = int(target.sum())
    if positives == 0:
        return float("nan")
    order = torch.argsort(scores.reshape(-1), descending=True, stable=True)
    hits = target[order].double()
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision_at * hits).sum() / positives)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
    """``scores``, ``targets``: (N, C). Returns mAP over classes with a positive, and AP per class (NaN: none)."""
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    return nanmean(torch.tensor(per_class, dtype=torch.float64)), per_class

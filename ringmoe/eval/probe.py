"""Probes on frozen features: a linear probe (logistic regression, full-batch L-BFGS) and a weighted kNN, plus
stratified k-fold cross-validation for small labelled sets. Deterministic for a seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale by the training features' mean and std (a probe's regularisation then means the same everywhere)."""
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp(min=1e-6)
    return [(x - mean) / std for x in (train, *others)]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    classes: int,
    multi_label: bool = False,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> torch.Tensor:
    """Fit logistic regression (softmax; per-class sigmoids when ``multi_label``, labels then (N, C) 0/1) on
    standardized features; return test scores (N_test, C): probabilities."""
    train_x, test_x = _standardize(train_features.double(), test_features.double())
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(train_x.shape[1], classes, generator=generator, dtype=torch.float64) * 0.01).requires_grad_()
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    labels = train_labels.double() if multi_label else train_labels.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = train_x @ weight + bias
        if multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = test_x @ weight + bias
        return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    classes: int,
    k: int = 5,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted kNN on cosine similarity (each of the k neighbours votes exp(sim / T) for its class), as used to
    score self-supervised features; returns normalized votes (N_test, C)."""
    similarity = F.normalize(test_features.double(), dim=1) @ F.normalize(train_features.double(), dim=1).T
    k = min(k, train_features.shape[0])
    top, index = similarity.topk(k, dim=1)
    votes = torch.zeros(test_features.shape[0], classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels.long()[index], (top / temperature).exp())
    return votes / votes.sum(dim=1, keepdim=True)


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """Test indices of each fold: every class dealt round-robin over the folds after a seeded shuffle, so each
    fold has each class in proportion (as far as its count allows). Single-label ``labels`` (N,)."""
    generator = torch.Generator().manual_seed(seed)
    assignment = torch.empty(len(labels), dtype=torch.long)
    offset = 0
    for label in labels.unique(sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = (torch.arange(len(members)) + offset) % folds
        offset += len(members)  # the next class starts where this one stopped: folds stay balanced in size
    return [torch.nonzero(assignment == fold).flatten() for fold in range(folds)]


@dataclass
class CrossValidation:
    """Scores of one metric, one per fold; a fold where the metric is undefined (NaN: e.g. F1 of a class absent
    from its test set and never predicted) is left out of the mean and std."""

    scores: list[float]

    def _defined(self) -> torch.Tensor:
        values = torch.tensor(self.scores, dtype=torch.float64)
        return values[~values.isnan()]

    @property
    def mean(self) -> float:
        defined = self._defined()
        return float(defined.mean()) if len(defined) else float("nan")

    @property
    def std(self) -> float:
        defined = self._defined()
        return float(defined.std(unbiased=False)) if len(defined) else float("nan")


def out_of_fold(
    features: torch.Tensor,
    labels: torch.Tensor,
    folds: list[torch.Tensor],
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(test indices, predict(train_x, train_y, test_x))`` for each fold (test) against the rest (train)."""
    every = torch.arange(len(labels))
    predictions = []
    for test in folds:
        train = every[~torch.isin(every, test)]
        predictions.append((test, predict(features[train], labels[train], features[test])))
    return predictions


def group_folds(strata: torch.Tensor, groups: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """Test indices of each fold with every group's samples in one fold (tiles of one place on several dates
    never train and test together); groups are stratified by their most common stratum. At most one fold per
    group."""
    unique, inverse = groups.unique(return_inverse=True)
    group_strata = torch.stack([strata[inverse == g].mode().values for g in range(len(unique))])
    members = stratified_folds(group_strata, min(folds, len(unique)), seed)
    return [torch.nonzero(torch.isin(inverse, fold)).flatten() for fold in members]

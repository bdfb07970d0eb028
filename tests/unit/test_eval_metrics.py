"""Evaluation metrics against hand computations, and the probes on small synthetic cases."""

from __future__ import annotations

import math

import pytest
import torch

from ringmoe.eval.metrics import (
    accuracy,
    average_precision,
    balanced_accuracy,
    confusion_matrix,
    f1_per_class,
    iou_per_class,
    mean_average_precision,
)
from ringmoe.eval.probe import CrossValidation, group_folds, knn_scores, linear_probe, out_of_fold, stratified_folds


def test_confusion_accuracy_and_balanced_accuracy_by_hand():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2, 1])
    confusion = confusion_matrix(predicted, target, 3)
    assert confusion.tolist() == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert accuracy(confusion) == 5 / 8
    assert balanced_accuracy(confusion) == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)


def test_iou_and_f1_by_hand_with_an_ignored_label():
    # 2 classes; 255 is ignored. TP0=3, FP0 (predicted 0, true 1)=2, FN0 (true 0, predicted 1)=1; TP1=4.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 255, 255])
    predicted = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 1])
    confusion = confusion_matrix(predicted, target, 2, ignore_index=255)
    assert confusion.tolist() == [[3, 1], [2, 4]]
    iou = iou_per_class(confusion)
    assert iou.tolist() == pytest.approx([3 / (3 + 1 + 2), 4 / (4 + 2 + 1)])
    assert f1_per_class(confusion).tolist() == pytest.approx([2 * 3 / (2 * 3 + 1 + 2), 2 * 4 / (2 * 4 + 2 + 1)])
    assert math.isnan(iou_per_class(torch.tensor([[2, 0], [0, 0]]))[1])  # class absent everywhere
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        confusion_matrix(torch.tensor([0]), torch.tensor([5]), 2)


def test_average_precision_by_hand():
    # Ranked: pos, neg, pos, neg -> precisions at the positives 1/1 and 2/3.
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    # The order of the scores, not their order in the input, decides.
    assert average_precision(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([1, 0, 0])) == pytest.approx(1 / 3)
    assert math.isnan(average_precision(torch.tensor([0.3, 0.2]), torch.tensor([0, 0])))
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.3], [0.6, 0.7, 0.1]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    value, per_class = mean_average_precision(scores, targets)
    # class 0: ranked 0.9 (pos), 0.6, 0.2 -> 1; class 1: 0.8 (pos), 0.7 (pos) -> 1; class 2: no positive.
    assert per_class[:2] == [1.0, 1.0] and math.isnan(per_class[2]) and value == 1.0


def _blobs(n_per_class: int, classes: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_linear_probe_separates_blobs_and_is_deterministic():
    x, y = _blobs(20, 3)
    train, test = torch.arange(0, 60, 2), torch.arange(1, 60, 2)
    scores = linear_probe(x[train], y[train], x[test], 3, seed=1)
    assert (scores.argmax(1) == y[test]).float().mean() == 1.0
    assert torch.allclose(scores.sum(1), torch.ones(len(test), dtype=torch.float64))
    assert torch.equal(scores, linear_probe(x[train], y[train], x[test], 3, seed=1))
    multi = torch.nn.functional.one_hot(y, 3)
    probabilities = linear_probe(x[train], multi[train], x[test], 3, multi_label=True)
    assert mean_average_precision(probabilities, multi[test])[0] == 1.0


def test_knn_votes_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_scores(train, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), 2, k=1)
    assert scores.argmax(1).tolist() == [0, 1] and scores.max(1).values.tolist() == [1.0, 1.0]
    votes = knn_scores(train, labels, torch.tensor([[1.0, 1.0]]), 2, k=3, temperature=1.0)
    cos = torch.tensor([1 / 2**0.5, 1.0 / (0.8200**0.5) / 2**0.5, 1 / 2**0.5], dtype=torch.float64)
    expected0 = (cos[0].exp() + cos[1].exp()) / cos.exp().sum()
    assert float(votes[0, 0]) == pytest.approx(float(expected0), rel=1e-6)


def test_stratified_folds_partition_and_balance_the_classes():
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 2)
    folds = stratified_folds(labels, 2, seed=3)
    assert sorted(torch.cat(folds).tolist()) == list(range(12))
    for fold in folds:
        assert torch.bincount(labels[fold], minlength=3).tolist() == [3, 2, 1]
    assert [f.tolist() for f in folds] == [f.tolist() for f in stratified_folds(labels, 2, seed=3)]
    # A predictor that sees only its training fold: the majority class of the training labels.
    predictions = out_of_fold(
        labels.double()[:, None], labels, folds, lambda tx, ty, vx: ty.mode().values.expand(len(vx))
    )
    result = CrossValidation([float((p == labels[test]).double().mean()) for test, p in predictions])
    assert result.scores == [0.5, 0.5] and result.mean == 0.5 and result.std == 0.0


def test_group_folds_keep_a_group_in_one_fold_and_stratify_groups():
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5])
    strata = torch.tensor([1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0])  # group majorities: 1, 1, 0, 0, 1, 0
    folds = group_folds(strata, groups, 3, seed=1)
    assert sorted(torch.cat(folds).tolist()) == list(range(12))
    for fold in folds:
        members = set(groups[fold].tolist())
        assert all(set(torch.nonzero(groups == g).flatten().tolist()) <= set(fold.tolist()) for g in members)
        majorities = [int(strata[groups == g].mode().values) for g in members]
        assert sorted(majorities) == [0, 1]  # 3 groups of each majority: one of each per fold
    assert len(group_folds(strata, groups, 10)) == 6  # never more folds than groups


def test_results_table_and_confusion_png(tmp_path):
    import json

    from PIL import Image

    from ringmoe.eval.report import Result, confusion_png, write_results

    rows = [Result("scenes (kNN)", "random init", "accuracy", 0.5, 0.1, 12, 3, 0.25)]
    table = write_results(rows, tmp_path).read_text()
    assert "| scenes (kNN) | random init | accuracy | 0.500 ± 0.100 | 0.250 | 12 | 3 |" in table
    assert json.loads((tmp_path / "results.json").read_text())["results"][0]["n"] == 12
    path = confusion_png(torch.tensor([[3, 1], [0, 4]]), ["water", "forest"], tmp_path / "confusion.png")
    with Image.open(path) as image:
        image.load()
        assert image.size[0] > 32 and image.size[1] >= 32
        assert len(image.getcolors(maxcolors=4096) or []) > 2  # cells of different shades, not a blank image

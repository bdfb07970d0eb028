"""The four frozen-encoder tasks. Each cross-validates over folds that keep a place's samples together and scores
a reference predictor (majority class, label frequency, "all changed") through the same folds as the chance
level. The encoder is never trained: probes and decoders fit on its features only.

- ``scene``: linear probe (logistic regression) and weighted kNN on pooled features; accuracy, balanced accuracy.
  On a set with split files, optionally also a short end-to-end fine-tune (``EvalConfig.finetune``), the one place
  where a copy of the encoder is trained.
- ``multilabel``: per-class sigmoid probe on pooled features; macro mAP and sample-averaged mAP.
- ``segmentation``: linear decoder (per-pixel logistic regression) on every stage's map upsampled to the label
  grid and concatenated; mIoU and pixel accuracy.
- ``change``: the same decoder on |features(after) - features(before)|; F1 and IoU of the changed class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from ringmoe.config.evaluation import EvalConfig
from ringmoe.core.errors import DataError
from ringmoe.eval.datasets import IGNORE, LabelledSet
from ringmoe.eval.datasets.common import SPLITS
from ringmoe.eval.encoder import EncoderUnavailable, FrozenEncoder
from ringmoe.eval.features import dense_features, pooled_features
from ringmoe.eval.finetune import finetune_predict
from ringmoe.eval.metrics import (
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    f1_per_class,
    iou_per_class,
    mean_average_precision,
    nanmean,
)
from ringmoe.eval.probe import CrossValidation, group_folds, knn_scores, linear_probe, out_of_fold
from ringmoe.eval.protocol import bootstrap_interval, label_fraction, paired_bootstrap_interval
from ringmoe.eval.report import Result

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Score = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass
class SplitPredictions:
    """What a fixed-split task predicted for each test image, per row (``Result.task``), kept so that two
    encoders' scores can be compared on the same bootstrap resamples (``paired_differences``)."""

    target: torch.Tensor  # (n_test,) true classes
    metrics: dict[str, Score]  # Result.metric -> score(predicted, target)
    predicted: dict[str, torch.Tensor] = field(default_factory=dict)  # Result.task -> (n_test,) classes


@dataclass
class TaskOutcome:
    results: list[Result]
    class_names: list[str]
    per_class: dict[str, list[float]] = field(default_factory=dict)  # e.g. "F1 (linear probe)" -> per class
    confusion: Optional[torch.Tensor] = None  # out-of-fold [true, predicted] counts of the main predictor
    pooled: Optional[torch.Tensor] = None  # (N, C) for the embedding plots
    colour: list[str] = field(default_factory=list)  # label name per pooled sample
    test: Optional[SplitPredictions] = None  # on a fixed split
    notes: list[str] = field(default_factory=list)  # rows left out and why, for the report


def _folds(data: LabelledSet, settings: EvalConfig) -> list[torch.Tensor]:
    if data.kind == "scene":
        strata = data.labels
    elif data.kind in ("segmentation", "change"):
        strata = torch.stack([_majority(m) for m in data.labels])
    else:
        strata = torch.zeros(len(data), dtype=torch.long)
    return group_folds(strata, data.groups, settings.folds, settings.seed)


def _majority(pixels: torch.Tensor) -> torch.Tensor:
    scored = pixels[pixels != IGNORE]
    return scored.mode().values if len(scored) else torch.tensor(IGNORE)


def _result(task: str, encoder: FrozenEncoder, metric: str, scores: CrossValidation, chance: CrossValidation, n: int):
    return Result(task, encoder.name, metric, scores.mean, scores.std, n, len(scores.scores), chance.mean)


def _per_fold(predictions, labels, score: Score) -> CrossValidation:
    return CrossValidation([score(predicted, labels[test]) for test, predicted in predictions])


def _pooled(encoder: FrozenEncoder, data: LabelledSet, settings: EvalConfig) -> torch.Tensor:
    return pooled_features(encoder, data.images, data.modality, settings.batch_size)


def _scene_predictors(classes: int, settings: EvalConfig) -> dict[str, Predict]:
    return {
        "linear probe": lambda tx, ty, vx: linear_probe(
            tx, ty, vx, classes, weight_decay=settings.weight_decay, seed=settings.seed
        ).argmax(1),
        "kNN": lambda tx, ty, vx: knn_scores(tx, ty, vx, classes, k=settings.knn_k).argmax(1),
    }


def _scene_metrics(classes: int) -> dict[str, Score]:
    return {
        "accuracy": lambda p, t: accuracy(confusion_matrix(p, t, classes)),
        "balanced accuracy": lambda p, t: balanced_accuracy(confusion_matrix(p, t, classes)),
    }


def scene_classification(encoder: FrozenEncoder, data: LabelledSet, settings: EvalConfig) -> TaskOutcome:
    if data.split is not None:
        return scene_classification_on_splits(encoder, data, settings)
    features, labels, classes = _pooled(encoder, data, settings), data.labels, len(data.class_names)
    folds = _folds(data, settings)
    predictors = _scene_predictors(classes, settings)
    majority = out_of_fold(features, labels, folds, lambda tx, ty, vx: ty.mode().values.expand(len(vx)))
    results, per_class, confusion = [], {}, None
    for name, predict in predictors.items():
        predictions = out_of_fold(features, labels, folds, predict)
        for metric, fold_score in _scene_metrics(classes).items():
            results.append(
                _result(
                    f"{data.name} ({name})",
                    encoder,
                    metric,
                    _per_fold(predictions, labels, fold_score),
                    _per_fold(majority, labels, fold_score),
                    len(data),
                )
            )
        pooled_confusion = sum(confusion_matrix(p, labels[t], classes) for t, p in predictions)
        per_class[f"F1 ({name})"] = f1_per_class(pooled_confusion).tolist()
        confusion = pooled_confusion if confusion is None else confusion
    colour = [data.class_names[int(c)] for c in labels]
    return TaskOutcome(results, data.class_names, per_class, confusion, features, colour)


def scene_classification_on_splits(encoder: FrozenEncoder, data: LabelledSet, settings: EvalConfig) -> TaskOutcome:
    """Probes fit on each label fraction of ``train`` and score ``test``, with bootstrap intervals; the chance
    level is the majority class of the same training subset. With ``settings.finetune`` on for this set, a
    fine-tuned copy of the encoder is scored the same way (row "fine-tune")."""
    features, labels, classes = _pooled(encoder, data, settings), data.labels, len(data.class_names)
    train_all = torch.nonzero(data.split == SPLITS.index("train")).flatten()
    test = torch.nonzero(data.split == SPLITS.index("test")).flatten()
    if not len(train_all) or not len(test):
        raise DataError(f"{data.name}: a fixed split needs train and test samples (got {len(train_all)}, {len(test)})")
    predictions = SplitPredictions(labels[test], _scene_metrics(classes))
    results, per_class, confusion, notes = [], {}, None, []

    def score(name: str, fraction: float, train: torch.Tensor, predicted: torch.Tensor) -> None:
        task = f"{data.name} ({name}, {fraction * 100:g}% labels, {len(train)} train)"
        predictions.predicted[task] = predicted
        majority = labels[train].mode().values.expand(len(test))
        for metric, metric_score in predictions.metrics.items():
            interval = bootstrap_interval(
                predicted, labels[test], metric_score, settings.bootstrap, settings.confidence, settings.seed
            )
            chance = metric_score(majority, labels[test])
            results.append(
                Result(
                    task,
                    encoder.name,
                    metric,
                    interval.score,
                    interval.std,
                    len(test),
                    folds=0,
                    chance=chance,
                    low=interval.low,
                    high=interval.high,
                )
            )

    for fraction in settings.label_fractions:
        train = label_fraction(labels, train_all, fraction, settings.seed)
        for name, predict in _scene_predictors(classes, settings).items():
            predicted = predict(features[train], labels[train], features[test])
            score(name, fraction, train, predicted)
            if fraction == max(settings.label_fractions):
                test_confusion = confusion_matrix(predicted, labels[test], classes)
                per_class[f"F1 ({name})"] = f1_per_class(test_confusion).tolist()
                confusion = test_confusion if confusion is None else confusion
    if settings.finetune.applies_to(data.name):
        for fraction in settings.finetune.label_fractions:
            train = label_fraction(labels, train_all, fraction, settings.seed)
            try:
                predicted = finetune_predict(
                    encoder, data.images, data.modality, labels, train, test, classes, settings.finetune,
                    settings.seed, settings.batch_size,
                )  # fmt: skip
            except EncoderUnavailable as exc:
                notes.append(f"{data.name}: no fine-tune row for {encoder.name}: {exc}")
                break
            score("fine-tune", fraction, train, predicted)
    colour = [data.class_names[int(c)] for c in labels]
    return TaskOutcome(results, data.class_names, per_class, confusion, features, colour, predictions, notes)


def paired_differences(
    results: list[Result], test: SplitPredictions, reference: SplitPredictions, name: str, settings: EvalConfig
) -> None:
    """Add to every row of ``results`` that the reference encoder also has (same task on the same test images)
    its score minus the reference's, with a paired bootstrap interval, under ``Result.differences[name]``."""
    if not torch.equal(test.target, reference.target):
        raise ValueError(f"paired differences to {name}: the two encoders were scored on different test images")
    for row in results:
        if row.task in test.predicted and row.task in reference.predicted:
            row.differences[name] = paired_bootstrap_interval(
                test.predicted[row.task],
                reference.predicted[row.task],
                test.target,
                test.metrics[row.metric],
                settings.bootstrap,
                settings.confidence,
                settings.seed,
            )


def multilabel_classification(encoder: FrozenEncoder, data: LabelledSet, settings: EvalConfig) -> TaskOutcome:
    features, labels, classes = _pooled(encoder, data, settings), data.labels, len(data.class_names)
    folds = _folds(data, settings)
    probe = out_of_fold(
        features,
        labels,
        folds,
        lambda tx, ty, vx: linear_probe(
            tx, ty, vx, classes, multi_label=True, weight_decay=settings.weight_decay, seed=settings.seed
        ),
    )
    prior = out_of_fold(features, labels, folds, lambda tx, ty, vx: ty.mean(dim=0).expand(len(vx), -1))
    metrics = {
        "mAP (macro, classes with a positive)": lambda s, t: mean_average_precision(s, t)[0],
        "mAP (sample-averaged)": lambda s, t: mean_average_precision(s.T, t.T)[0],
    }
    task = f"{data.name} (linear probe)"
    results = [
        _result(task, encoder, metric, _per_fold(probe, labels, score), _per_fold(prior, labels, score), len(data))
        for metric, score in metrics.items()
    ]
    scores = torch.zeros_like(labels, dtype=torch.float64)
    for test, predicted in probe:
        scores[test] = predicted
    per_class = {"AP (out-of-fold)": mean_average_precision(scores, labels)[1]}
    # Colour each sample by its first label in the nomenclature's order.
    colour = [data.class_names[int(torch.nonzero(row)[0])] if row.any() else "none" for row in labels]
    return TaskOutcome(results, data.class_names, per_class, None, features, colour)


def _pixel_probe(
    features: torch.Tensor, labels: torch.Tensor, folds: list[torch.Tensor], classes: int, settings: EvalConfig
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per-pixel logistic regression on dense ``features`` (N, D, H, W); returns per fold (test samples,
    predicted map) for the probe and for the majority class of the training pixels."""
    pixels = features.permute(0, 2, 3, 1)  # (N, H, W, D)
    generator = torch.Generator().manual_seed(settings.seed)
    probe, majority = [], []
    every = torch.arange(len(labels))
    for test in folds:
        train = every[~torch.isin(every, test)]
        train_x, train_y = pixels[train].reshape(-1, pixels.shape[-1]), labels[train].reshape(-1)
        scored = torch.nonzero(train_y != IGNORE).flatten()
        if len(scored) > settings.max_train_pixels:
            scored = scored[torch.randperm(len(scored), generator=generator)[: settings.max_train_pixels]]
        test_x = pixels[test].reshape(-1, pixels.shape[-1])
        probabilities = linear_probe(
            train_x[scored], train_y[scored], test_x, classes, weight_decay=settings.weight_decay, seed=settings.seed
        )
        probe.append((test, probabilities.argmax(1).reshape(labels[test].shape)))
        common = train_y[scored].bincount(minlength=classes).argmax()
        majority.append((test, torch.full_like(labels[test], int(common))))
    return probe, majority


def _dense_task(
    encoder: FrozenEncoder,
    data: LabelledSet,
    settings: EvalConfig,
    features: torch.Tensor,
    metrics: dict[str, Callable[[torch.Tensor], float]],
    chance_predictions: Optional[Callable] = None,
) -> TaskOutcome:
    classes, labels = len(data.class_names), data.labels
    folds = _folds(data, settings)
    probe, majority = _pixel_probe(features, labels, folds, classes, settings)
    reference = chance_predictions(folds) if chance_predictions else majority
    task = f"{data.name} (linear decoder)"
    results = []
    for metric, score in metrics.items():

        def fold_score(predicted, target, score=score):
            return score(confusion_matrix(predicted, target, classes, ignore_index=IGNORE))

        scores, chance = _per_fold(probe, labels, fold_score), _per_fold(reference, labels, fold_score)
        results.append(_result(task, encoder, metric, scores, chance, len(data)))
    confusion = sum(confusion_matrix(p, labels[t], classes, ignore_index=IGNORE) for t, p in probe)
    per_class = {"IoU (linear decoder)": iou_per_class(confusion).tolist()}
    pooled = _pooled(encoder, data, settings)
    colour = [data.class_names[int(_majority(m))] if _majority(m) != IGNORE else "none" for m in labels]
    return TaskOutcome(results, data.class_names, per_class, confusion, pooled, colour)


def segmentation(encoder: FrozenEncoder, data: LabelledSet, settings: EvalConfig) -> TaskOutcome:
    features = dense_features(encoder, data.images, data.modality, settings.batch_size)
    metrics = {"mIoU": lambda c: nanmean(iou_per_class(c)), "pixel accuracy": accuracy}
    return _dense_task(encoder, data, settings, features, metrics)


def change_detection(encoder: FrozenEncoder, data: LabelledSet, settings: EvalConfig) -> TaskOutcome:
    before = dense_features(encoder, data.images, data.modality, settings.batch_size)
    after = dense_features(encoder, data.images_after, data.modality, settings.batch_size)
    metrics = {
        "F1 (changed)": lambda c: float(f1_per_class(c)[1]),
        "IoU (changed)": lambda c: float(iou_per_class(c)[1]),
    }

    def all_changed(folds):  # the reference for F1 of a rare class: flag every pixel
        return [(test, torch.ones_like(data.labels[test])) for test in folds]

    return _dense_task(encoder, data, settings, (after - before).abs(), metrics, all_changed)


TASKS = {
    "scene": scene_classification,
    "multilabel": multilabel_classification,
    "segmentation": segmentation,
    "change": change_detection,
}

"""How much of the unpruned encoder's downstream quality a pruned one keeps: a linear probe on a labelled set with
fixed splits (EuroSAT's protocol, ``ringmoe.eval.protocol``).

Each encoder is loaded from its directory with the evaluation harness (``load_encoder``), frozen and in eval mode,
where routing is dropless: an image's features do not depend on which other images share its batch. The harness's
linear probe fits on each encoder's pooled features of the same ``train`` images and predicts ``test``.

Retention = pruned / unpruned test accuracy. Its interval is a paired bootstrap over the test images: each draw
resamples the test indexes once and scores both encoders on that resample, so which images happen to be in the
test set moves both accuracies together and cancels in the ratio (an unpaired interval would be far wider).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ringmoe.config.schema import PruneDownstreamConfig
from ringmoe.core.errors import ConfigError
from ringmoe.eval.datasets import ADAPTERS, LabelledSet
from ringmoe.eval.datasets.common import SPLITS
from ringmoe.eval.features import load_encoder, pooled_features
from ringmoe.eval.metrics import accuracy, confusion_matrix
from ringmoe.eval.probe import linear_probe
from ringmoe.eval.protocol import bootstrap_interval, label_fraction

log = logging.getLogger(__name__)


@dataclass
class DownstreamRetention:
    task: str  # the labelled set's name, e.g. "eurosat_rgb scenes"
    modality: str
    train_images: int  # the probe's training images (``label_fraction`` of train)
    test_images: int
    unpruned_accuracy: float
    pruned_accuracy: float
    retention: float  # pruned / unpruned accuracy on the whole test split
    low: float  # paired bootstrap interval of the retention
    high: float
    confidence: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_labelled_set(settings: PruneDownstreamConfig) -> LabelledSet:
    """The set ``prune.downstream`` names, read by its evaluation adapter; it must be scene classification with
    train and test splits."""
    adapter = ADAPTERS.get(settings.dataset)
    if adapter is None:
        raise ConfigError(f"prune.downstream.dataset {settings.dataset!r} not in {sorted(ADAPTERS)}")
    if "sensor" in settings.options:
        raise ConfigError("prune.downstream.options.sensor: set prune.downstream.sensor instead")
    kwargs = {"sensor": settings.sensor, **settings.options}
    if settings.limit_per_class:
        kwargs["limit_per_class"] = settings.limit_per_class
    root = Path(settings.root)
    try:
        inspect.signature(adapter).bind(root, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"prune.downstream options {kwargs} for {settings.dataset!r}: {exc}") from None
    data = adapter(root, **kwargs)
    split = data.split if data.split is not None else torch.empty(0, dtype=torch.long)
    counts = {name: int((split == index).sum()) for index, name in enumerate(SPLITS)}
    if data.kind != "scene" or not counts["train"] or not counts["test"]:
        raise ConfigError(
            f"prune.downstream.root {root}: downstream retention needs scene classification with train and test "
            f"split files (splits/{{train,val,test}}.txt); got {data.kind!r} with splits {counts}"
        )
    return data


def _predictions(
    source: Path,
    data: LabelledSet,
    train: torch.Tensor,
    test: torch.Tensor,
    settings: PruneDownstreamConfig,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The test predictions of a linear probe on ``source``'s pooled features."""
    encoder = load_encoder(source)
    encoder.module.to(dtype)
    encoder.to(str(device))
    images = data.images[torch.cat([train, test])].to(dtype)
    features = pooled_features(encoder, images, data.modality, settings.batch_size)
    train_x, test_x = features[: len(train)], features[len(train) :]
    classes = len(data.class_names)
    scores = linear_probe(train_x, data.labels[train], test_x, classes, weight_decay=settings.weight_decay, seed=seed)
    return scores.argmax(1)


def downstream_retention(
    unpruned: Path,
    pruned: Path,
    data: LabelledSet,
    settings: PruneDownstreamConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DownstreamRetention:
    """Linear-probe test accuracy of the encoders in the ``unpruned`` and ``pruned`` directories, loaded one at a
    time, and the ratio with its paired bootstrap interval."""
    train_all = torch.nonzero(data.split == SPLITS.index("train")).flatten()
    test = torch.nonzero(data.split == SPLITS.index("test")).flatten()
    train = label_fraction(data.labels, train_all, settings.label_fraction, seed)
    log.info(
        "downstream retention on %s (%s): probes train on %d of its %d train images (label fraction %g) and score "
        "%d test images", data.name, data.modality, len(train), len(train_all), settings.label_fraction, len(test),
    )  # fmt: skip
    device = torch.device(device)
    predicted = [_predictions(s, data, train, test, settings, seed, device, dtype) for s in (unpruned, pruned)]
    target, classes = data.labels[test], len(data.class_names)

    def score(paired: torch.Tensor, labels: torch.Tensor) -> float:
        before = accuracy(confusion_matrix(paired[:, 0], labels, classes))
        after = accuracy(confusion_matrix(paired[:, 1], labels, classes))
        return after / before if before else float("nan")

    # One (N, 2) tensor, so that the harness's bootstrap resamples both encoders' predictions with one index draw.
    interval = bootstrap_interval(
        torch.stack(predicted, dim=1), target, score, settings.bootstrap, settings.confidence, seed
    )
    before, after = (accuracy(confusion_matrix(p, target, classes)) for p in predicted)
    return DownstreamRetention(
        data.name, data.modality, len(train), len(test), before, after, interval.score, interval.low, interval.high,
        settings.confidence,
    )  # fmt: skip

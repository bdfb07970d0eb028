"""The fixed-split protocol: split files, label fractions, bootstrap intervals, paired differences between
encoders, and the harness's probes against scikit-learn on identical features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ringmoe.config.evaluation import EvalConfig, EvalTaskConfig
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.eval.datasets import ADAPTERS
from ringmoe.eval.metrics import accuracy, confusion_matrix
from ringmoe.eval.probe import knn_scores, linear_probe
from ringmoe.eval.protocol import bootstrap_interval, label_fraction, paired_bootstrap_interval
from ringmoe.eval.report import write_results
from ringmoe.eval.tasks import scene_classification

SHARED_EUROSAT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "labelled" / "eurosat_rgb"


def write_class_folders(root: Path, per_class: int = 6) -> list[str]:
    """Two classes of 8 px RGB JPEGs (dark and bright, with noise), EuroSAT's layout; returns the keys."""
    rng = np.random.default_rng(0)
    keys = []
    for name, level in (("Forest", 60), ("SeaLake", 180)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 20, (8, 8, 3)), 1, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.jpg", quality=95)
            keys.append(f"{name}/{name}_{i}.jpg")
    return keys


def write_splits(root: Path, splits: dict[str, list[str]]) -> None:
    (root / "splits").mkdir(exist_ok=True)
    for split, keys in splits.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{k}\n" for k in keys))


def write_split_set(root: Path) -> None:
    """12 dark and 12 bright scenes split 8 / 1 / 3 per class into train / val / test."""
    keys = write_class_folders(root, per_class=12)
    forest, sea = keys[:12], keys[12:]
    write_splits(root, {"train": forest[:8] + sea[:8], "val": forest[8:9] + sea[8:9], "test": forest[9:] + sea[9:]})


def test_split_files_mark_each_scene_and_splits_is_not_a_class(tmp_path: Path) -> None:
    keys = write_class_folders(tmp_path)
    forest, sea = keys[:6], keys[6:]
    write_splits(tmp_path, {"train": forest[:3] + sea[:3], "val": [forest[3], sea[3]], "test": [forest[4], sea[4]]})
    data = ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb")
    assert data.class_names == ["Forest", "SeaLake"]  # the splits/ folder is not a class
    assert data.split.tolist() == [0, 0, 0, 1, 2, 0, 0, 0, 1, 2]
    assert data.keys[:3] == forest[:3] and data.labels.tolist() == [0] * 5 + [1] * 5
    assert data.skipped == {"in no split file": 2}  # forest[5] and sea[5]: counted, not silently dropped
    limited = ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb", limit_per_class=2)
    assert limited.split.tolist() == [0, 0, 1, 2, 0, 0, 1, 2]  # the limit holds per class and split


def test_bad_split_files_name_the_file_and_line(tmp_path: Path) -> None:
    keys = write_class_folders(tmp_path)
    write_splits(tmp_path, {"train": keys[:4], "val": [keys[4]], "test": ["Forest/missing.jpg"]})
    with pytest.raises(DataError, match=r"test.txt:1: .*Forest/missing.jpg does not exist"):
        ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb")
    write_splits(tmp_path, {"train": keys[:4], "val": [keys[4]], "test": [keys[0]]})
    with pytest.raises(DataError, match=r"test.txt:1: Forest/Forest_0.jpg is already in train.txt"):
        ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb")
    (tmp_path / "splits" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val.txt: missing"):
        ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb")


def test_label_fractions_are_stratified_seeded_and_nested() -> None:
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7)
    candidates = torch.arange(len(labels))
    ten = label_fraction(labels, candidates, 0.1, seed=3)
    assert torch.bincount(labels[ten]).tolist() == [10, 5, 1]  # ceil per class, at least one of each
    assert torch.equal(ten, label_fraction(labels, candidates, 0.1, seed=3))
    assert not torch.equal(ten, label_fraction(labels, candidates, 0.1, seed=4))
    assert set(ten.tolist()) <= set(label_fraction(labels, candidates, 0.5, seed=3).tolist())
    assert torch.equal(label_fraction(labels, candidates, 1.0, seed=3), candidates)
    with pytest.raises(ValueError):
        label_fraction(labels, candidates, 0.0, seed=0)


def test_bootstrap_interval_matches_the_binomial_one() -> None:
    """Accuracy over n independent test images is a binomial proportion: its 95 % interval is about
    p ± 1.96 sqrt(p (1 - p) / n). The percentile bootstrap must agree within its own sampling noise."""
    n, p = 2000, 0.8
    target = torch.zeros(n, dtype=torch.long)
    predicted = torch.where(torch.arange(n) < p * n, 0, 1)

    def score(pred, true):
        return accuracy(confusion_matrix(pred, true, 2))

    interval = bootstrap_interval(predicted, target, score, resamples=2000, seed=0)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert interval.score == pytest.approx(p)
    assert interval.low == pytest.approx(p - half, abs=0.2 * half)
    assert interval.high == pytest.approx(p + half, abs=0.2 * half)
    assert interval == bootstrap_interval(predicted, target, score, resamples=2000, seed=0)  # seeded


def test_paired_interval_is_that_of_the_difference() -> None:
    """A is right on every image B gets right plus k more: the difference is exactly k / n, and its paired
    interval (both scored on each resample) is narrower than either encoder's own interval, let alone the
    interval of a difference of two independent estimates."""
    n, k = 1000, 50
    target = torch.zeros(n, dtype=torch.long)
    b = torch.where(torch.arange(n) < 700, 0, 1)  # right on 700
    a = torch.where(torch.arange(n) < 700 + k, 0, 1)  # right on the same 700 and k more

    def score(pred, true):
        return accuracy(confusion_matrix(pred, true, 2))

    difference = paired_bootstrap_interval(a, b, target, score, resamples=1000, seed=0)
    assert difference.score == pytest.approx(k / n)
    assert difference.low <= k / n <= difference.high and difference.low > 0  # A is better on every resample
    widths = [i.high - i.low for i in (bootstrap_interval(p, target, score, 1000, seed=0) for p in (a, b))]
    assert difference.high - difference.low < min(widths)
    assert difference.high - difference.low < 0.5 * math.hypot(*widths)
    same = paired_bootstrap_interval(a, a.clone(), target, score, resamples=200, seed=0)
    assert (same.score, same.low, same.high, same.std) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one prediction per test image"):
        paired_bootstrap_interval(a[:10], b, target, score)


def test_reports_carry_paired_differences_to_the_reference_encoders(tmp_path: Path) -> None:
    from ringmoe.eval.run import evaluate

    write_split_set(tmp_path / "data")
    task = EvalTaskConfig("class_folders", str(tmp_path / "data"), "scenes", {"sensor": "worldview2_rgb"})
    config = EvalConfig(
        encoders=["pixels:8", "pixels:16"], tasks=[task], references=["pixels:16"], knn_k=3, bootstrap=200,
        plots=False, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    config.validate()
    report = evaluate(config, tmp_path)
    assert report.encoders == {"pixels:8": "pixel statistics (8 px)", "pixels:16": "pixel statistics (16 px)"}
    reference = "pixel statistics (16 px)"
    rows = {(r.encoder, r.task, r.metric): r for r in report.results}
    for (encoder, task_name, metric), row in rows.items():
        if encoder == reference:
            assert row.differences == {}  # never compared with itself
            continue
        difference = row.differences[reference]
        assert difference.score == pytest.approx(row.mean - rows[(reference, task_name, metric)].mean)
        assert difference.low <= difference.score <= difference.high
    table = report.table()
    assert f"| Δ {reference} |" in table and "paired bootstrap interval" in table
    assert "| +0.000 [+0.000, +0.000] |" in table  # both are perfect on dark vs bright

    assert EvalConfig(encoders=["a", "random:x@1", "pixels:8", "random:y", "pixels"]).reference_sources() == [
        "random:x@1",
        "pixels:8",
    ]
    with pytest.raises(ConfigError, match=r"eval.references \['pixels'\] are not in eval.encoders"):
        EvalConfig(encoders=["pixels:8"], tasks=[task], references=["pixels"]).validate()


def test_scene_task_on_splits_reports_test_scores_with_intervals(tmp_path: Path) -> None:
    from ringmoe.eval.features import load_encoder

    keys = write_class_folders(tmp_path, per_class=12)
    forest, sea = keys[:12], keys[12:]
    write_splits(tmp_path, {"train": forest[:8] + sea[:8], "val": forest[8:9] + sea[8:9], "test": forest[9:] + sea[9:]})
    data = ADAPTERS["class_folders"](tmp_path, sensor="worldview2_rgb")
    settings = EvalConfig(encoders=["pixels"], label_fractions=[0.25, 1.0], knn_k=3, bootstrap=200)
    outcome = scene_classification(load_encoder("pixels:8"), data, settings)
    rows = {(r.task, r.metric): r for r in outcome.results}
    assert len(rows) == 2 * 2 * 2  # fractions x (linear, kNN) x (accuracy, balanced accuracy)
    full = rows[(f"{data.name} (linear probe, 100% labels, 16 train)", "accuracy")]
    assert (full.n, full.folds, full.chance) == (6, 0, 0.5)  # 6 test images; majority of a balanced train
    assert full.mean == 1.0 and full.low <= full.mean <= full.high  # dark vs bright: separable by pixel means
    assert (f"{data.name} (kNN, 25% labels, 4 train)", "accuracy") in rows
    table = write_results(outcome.results, tmp_path / "out").read_text()
    assert "| 1.000 [1.000, 1.000] | 0.500 | 6 | test |" in table


def test_probes_agree_with_scikit_learn_on_identical_features() -> None:
    """The harness's L-BFGS logistic regression and cosine kNN against scikit-learn's on the same standardized
    features: accuracy within 1 point. Features: 10 Gaussian classes in 32 dimensions, overlapping enough that
    neither probe is perfect."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 32, generator=generator, dtype=torch.float64) * 0.6
    labels = torch.arange(10).repeat_interleave(300)
    features = centres[labels] + torch.randn(len(labels), 32, generator=generator, dtype=torch.float64)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:2000], order[2000:]
    ours = linear_probe(features[train], labels[train], features[test], 10, weight_decay=1e-3).argmax(1)
    mean, std = features[train].mean(0), features[train].std(0, unbiased=False)
    x_train, x_test = ((features[train] - mean) / std).numpy(), ((features[test] - mean) / std).numpy()
    # sklearn's C multiplies the summed log-loss: C = 1 / (2 * weight_decay * n) is the same objective.
    reference = LogisticRegression(C=1 / (2 * 1e-3 * len(train)), max_iter=2000).fit(x_train, labels[train].numpy())
    ours_accuracy = float((ours == labels[test]).double().mean())
    sklearn_accuracy = float((reference.predict(x_test) == labels[test].numpy()).mean())
    assert 0.3 < sklearn_accuracy < 0.95 and abs(ours_accuracy - sklearn_accuracy) <= 0.01

    votes = knn_scores(features[train], labels[train], features[test], 10, k=20).argmax(1)
    # The harness's vote exp(similarity / 0.07) as sklearn weights over cosine distance d = 1 - similarity.
    neighbours = KNeighborsClassifier(n_neighbors=20, metric="cosine", weights=lambda d: np.exp((1 - d) / 0.07))
    neighbours.fit(features[train].numpy(), labels[train].numpy())
    knn_accuracy = float((votes == labels[test]).double().mean())
    sklearn_knn = float((neighbours.predict(features[test].numpy()) == labels[test].numpy()).mean())
    assert abs(knn_accuracy - sklearn_knn) <= 0.01


@pytest.mark.skipif(not (SHARED_EUROSAT / "splits" / "train.txt").is_file(), reason="shared EuroSAT pack absent")
def test_the_shared_eurosat_split_reads_as_published() -> None:
    data = ADAPTERS["class_folders"](SHARED_EUROSAT, sensor="worldview2_rgb", limit_per_class=3)
    assert len(data.class_names) == 10 and "splits" not in data.class_names
    assert torch.bincount(data.split).tolist() == [30, 30, 30] and data.images.shape[1:] == (3, 64, 64)
    assert data.skipped == {}  # every EuroSAT image is in exactly one split file

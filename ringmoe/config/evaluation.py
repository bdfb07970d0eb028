"""The evaluation config (``ringmoe eval --config configs/eval/*.yaml``): which encoders, on which labelled sets,
with which probe settings. Loaded strictly like the run config: an unknown key is an error naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ringmoe.core.errors import ConfigError
from ringmoe.core.structured import load_structured


@dataclass
class EvalTaskConfig:
    """One labelled set. ``dataset``: the adapter (``ringmoe.eval.datasets.ADAPTERS``); ``root``: its folder,
    relative to the config file's directory unless absolute; ``options``: the adapter's keyword arguments
    (``sensor``, ``kind``, ``tile``, ``band_indexes``, ``change_threshold``, ...); ``name``: the row label."""

    dataset: str = ""
    root: str = ""
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """``encoders``: sources ``load_encoder`` takes (checkpoint, consolidated, pruned or HF directory, relative
    to the working directory; ``random:<model yaml>[@seed]``; ``pixels``; ``timm:<name>``).

    Probes: ``folds``-fold cross-validation over groups of samples of one place, ``seed`` for folds, probe
    initialization, pixel sampling and t-SNE; ``knn_k`` neighbours; ``weight_decay`` of the logistic
    regressions; ``max_train_pixels`` per fold for the dense tasks.

    Sets with fixed split files (``train``/``val``/``test``) are scored on ``test`` instead of by folds: probes
    train on each of ``label_fractions`` of ``train`` (stratified, seeded), and every score carries a
    ``confidence`` interval from ``bootstrap`` resamplings of the test images."""

    encoders: list[str] = field(default_factory=list)
    tasks: list[EvalTaskConfig] = field(default_factory=list)
    folds: int = 3
    seed: int = 0
    knn_k: int = 5
    weight_decay: float = 1e-3
    batch_size: int = 16
    max_train_pixels: int = 100_000
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    bootstrap: int = 1000
    confidence: float = 0.95
    device: str = "cpu"  # where encoders run, e.g. cuda; probes run on the CPU in float64
    output_dir: str = "runs/eval"
    plots: bool = True
    tsne: bool = True  # t-SNE beside PCA in the embedding plots

    def validate(self) -> None:
        if not self.encoders:
            raise ConfigError("eval.encoders is empty: name at least one encoder source")
        if not self.tasks:
            raise ConfigError("eval.tasks is empty: name at least one labelled set")
        for index, task in enumerate(self.tasks):
            if not task.dataset or not task.root:
                raise ConfigError(f"eval.tasks[{index}]: needs dataset and root (got {task.dataset!r}, {task.root!r})")
        if self.folds < 2:
            raise ConfigError(f"eval.folds={self.folds}: cross-validation needs at least 2 folds")
        if not self.label_fractions or not all(0.0 < f <= 1.0 for f in self.label_fractions):
            raise ConfigError(f"eval.label_fractions={self.label_fractions}: each must be in (0, 1]")
        if self.bootstrap < 100 or not 0.0 < self.confidence < 1.0:
            raise ConfigError(
                f"eval.bootstrap={self.bootstrap} must be >= 100 and eval.confidence={self.confidence} in (0, 1)"
            )
        if self.knn_k < 1 or self.batch_size < 1 or self.max_train_pixels < 1:
            raise ConfigError(
                f"eval.knn_k={self.knn_k}, batch_size={self.batch_size} and max_train_pixels={self.max_train_pixels}"
                " must be >= 1"
            )


def load_eval_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalConfig:
    config = load_structured(EvalConfig, path, overrides)
    config.validate()
    return config

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
    (``sensor``, ``kind``, ``tile``, ``band_indexes``, ``change_threshold``, ...); ``name``: the row label;
    ``extra_sources``: directories of source YAMLs (sensors of your own) added to the built-ins, relative like
    ``root``."""

    dataset: str = ""
    root: str = ""
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    extra_sources: list[str] = field(default_factory=list)


@dataclass
class FinetuneConfig:
    """A short end-to-end fine-tune on scene sets with split files, beside the frozen-encoder probes: a copy of
    the encoder plus a linear head on its pooled last-stage features, trained together with AdamW for ``steps``
    batches of ``batch_size`` (random flips and quarter turns) on each of ``label_fractions`` of ``train``; ``lr``
    warms up linearly over ``warmup_steps`` then follows a cosine to zero. Nothing is chosen on ``test``: the
    last step's weights are scored. ``aux_loss_coef`` weighs the routers' load-balancing loss as in pretraining,
    so the short run does not collapse routing. ``tasks``: the sets (by their row name) to fine-tune on; empty:
    every scene set with split files. ``enabled`` switches it all off without editing the rest."""

    enabled: bool = False
    tasks: list[str] = field(default_factory=list)
    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.001
    label_fractions: list[float] = field(default_factory=lambda: [1.0])

    def applies_to(self, task_name: str) -> bool:
        return self.enabled and (not self.tasks or task_name in self.tasks)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(
                f"eval.finetune: steps={self.steps} and batch_size={self.batch_size} must be >= 1 and "
                f"warmup_steps={self.warmup_steps} in [0, steps]"
            )
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0 or self.aux_loss_coef < 0:
            raise ConfigError(
                f"eval.finetune: lr={self.lr} and grad_clip={self.grad_clip} must be > 0, weight_decay="
                f"{self.weight_decay} and aux_loss_coef={self.aux_loss_coef} >= 0"
            )
        if not self.label_fractions or not all(0.0 < f <= 1.0 for f in self.label_fractions):
            raise ConfigError(f"eval.finetune.label_fractions={self.label_fractions}: each must be in (0, 1]")


@dataclass
class EvalConfig:
    """``encoders``: sources ``load_encoder`` takes (checkpoint, consolidated, pruned or HF directory, relative
    to the working directory; ``random:<model yaml>[@seed]``; ``pixels``; ``timm:<name>``).

    Probes: ``folds``-fold cross-validation over groups of samples of one place, ``seed`` for folds, probe
    initialization, pixel sampling and t-SNE; ``knn_k`` neighbours; ``weight_decay`` of the logistic
    regressions; ``max_train_pixels`` per fold for the dense tasks.

    Sets with fixed split files (``train``/``val``/``test``) are scored on ``test`` instead of by folds: probes
    train on each of ``label_fractions`` of ``train`` (stratified, seeded), and every score carries a
    ``confidence`` interval from ``bootstrap`` resamplings of the test images. There, every encoder's scores are
    also compared with each of ``references`` (encoder sources that are in ``encoders``): the difference with a
    paired bootstrap interval. Empty ``references``: the first ``random:`` source and the first ``pixels``
    source of ``encoders``, those present. ``finetune``: an end-to-end fine-tune row on those sets too."""

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
    references: list[str] = field(default_factory=list)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
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
        missing = [source for source in self.references if source not in self.encoders]
        if missing:
            raise ConfigError(f"eval.references {missing} are not in eval.encoders {self.encoders}")
        self.finetune.validate()

    def reference_sources(self) -> list[str]:
        """The encoders every other one is compared with (paired differences on fixed splits)."""
        if self.references:
            return list(self.references)
        random = [s for s in self.encoders if s.startswith("random:")][:1]
        pixels = [s for s in self.encoders if s == "pixels" or s.startswith("pixels:")][:1]
        return random + pixels


def load_eval_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalConfig:
    config = load_structured(EvalConfig, path, overrides)
    config.validate()
    return config

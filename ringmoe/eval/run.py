"""``ringmoe eval``: every encoder on every labelled set of the config, one results table and the plots.

Output directory::

    results.md / results.json       one row per task, encoder and metric: mean ± std over folds, chance, n
    config.yaml                     the config that produced them
    plots/<encoder>/<task>_*.png    per-class scores, confusion matrix, PCA and t-SNE coloured by label
    plots/<encoder>/sensors_*.png   the encoder's pooled features of every classification set, by sensor
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ringmoe.config.evaluation import EvalConfig, EvalTaskConfig
from ringmoe.core.errors import ConfigError
from ringmoe.core.files import atomic_write_text
from ringmoe.core.structured import to_yaml
from ringmoe.eval.datasets import ADAPTERS, LabelledSet
from ringmoe.eval.features import EncoderUnavailable, FrozenEncoder, load_encoder
from ringmoe.eval.plots import embedding_png, pca_2d, per_class_png, tsne_2d
from ringmoe.eval.report import Result, confusion_png, write_results
from ringmoe.eval.tasks import TASKS, TaskOutcome

log = logging.getLogger(__name__)


@dataclass
class EvalReport:
    results: list[Result]
    notes: list[str]
    out_dir: Path
    plots: list[Path] = field(default_factory=list)

    def table(self) -> str:
        return (self.out_dir / "results.md").read_text()


def load_task_data(task: EvalTaskConfig, index: int, config_dir: Path) -> LabelledSet:
    if task.dataset not in ADAPTERS:
        raise ConfigError(f"eval.tasks[{index}].dataset {task.dataset!r} not in {sorted(ADAPTERS)}")
    adapter = ADAPTERS[task.dataset]
    root = Path(task.root) if Path(task.root).is_absolute() else config_dir / task.root
    try:
        inspect.signature(adapter).bind(root, **task.options)
    except TypeError as exc:
        raise ConfigError(f"eval.tasks[{index}].options {dict(task.options)} for {task.dataset!r}: {exc}") from None
    data = adapter(root, **task.options)
    if task.name:
        data.name = task.name
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _embedding_plots(
    features: torch.Tensor, colour: list[str], title: str, stem: Path, tsne: bool, seed: int
) -> list[Path]:
    if len(features) < 3:
        return []  # nothing to project
    paths = [embedding_png(pca_2d(features), colour, f"PCA: {title}", stem.with_name(stem.name + "_pca.png"))]
    if tsne:
        paths.append(
            embedding_png(tsne_2d(features, seed), colour, f"t-SNE: {title}", stem.with_name(stem.name + "_tsne.png"))
        )
    return paths


def _task_plots(outcome: TaskOutcome, data: LabelledSet, folder: Path, config: EvalConfig) -> list[Path]:
    stem = folder / _slug(data.name)
    paths = [
        per_class_png(outcome.per_class, outcome.class_names, data.name, stem.with_name(f"{stem.name}_per_class.png"))
    ]
    if outcome.confusion is not None:
        paths.append(
            confusion_png(outcome.confusion, outcome.class_names, stem.with_name(f"{stem.name}_confusion.png"))
        )
    if outcome.pooled is not None:
        title = f"{data.name} by label"
        paths += _embedding_plots(outcome.pooled, outcome.colour, title, stem, config.tsne, config.seed)
    return paths


def evaluate(config: EvalConfig, config_dir: Path, datasets: list[LabelledSet] | None = None) -> EvalReport:
    """Score every encoder of ``config`` on every task; dataset roots resolve against ``config_dir``.
    ``datasets``: labelled sets already loaded, scored instead of ``config.tasks`` (for callers that score many
    encoders on one load, like the ensemble ablation)."""
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", to_yaml(config))
    if datasets is None:
        datasets = [load_task_data(task, index, config_dir) for index, task in enumerate(config.tasks)]
    notes = [
        f"{data.name}: {len(data)} samples ({data.sensor}); left out {data.skipped}"
        for data in datasets
        if data.skipped
    ]
    results: list[Result] = []
    plots: list[Path] = []
    progress = tqdm(total=len(config.encoders) * len(datasets), desc="eval", unit="task")
    for source in config.encoders:
        try:
            encoder = load_encoder(source).to(config.device)
        except EncoderUnavailable as exc:
            notes.append(f"skipped encoder {source}: {exc}")
            progress.update(len(datasets))
            continue
        pooled, sensors = [], []
        folder = out_dir / "plots" / _slug(encoder.name)
        for data in datasets:
            progress.set_postfix_str(f"{encoder.name[:30]} / {data.name[:30]}")
            outcome = _run_task(encoder, data, config, notes)
            progress.update(1)
            if outcome is None:
                continue
            results += outcome.results
            if config.plots:
                plots += _task_plots(outcome, data, folder, config)
            if data.kind in ("scene", "multilabel"):  # dense tasks reuse these images: count each image once
                pooled.append(outcome.pooled)
                sensors += [data.sensor] * len(outcome.pooled)
        if config.plots and len(set(sensors)) > 1 and len({p.shape[1] for p in pooled}) == 1:
            title = f"{encoder.name}: all sets by sensor"
            plots += _embedding_plots(torch.cat(pooled), sensors, title, folder / "sensors", config.tsne, config.seed)
    progress.close()
    write_results(results, out_dir, notes)
    return EvalReport(results, notes, out_dir, plots)


def _run_task(encoder: FrozenEncoder, data: LabelledSet, config: EvalConfig, notes: list[str]) -> TaskOutcome | None:
    try:
        return TASKS[data.kind](encoder, data, config)
    except EncoderUnavailable as exc:
        notes.append(f"skipped {data.name} for {encoder.name}: {exc}")
        log.warning("skipped %s for %s: %s", data.name, encoder.name, exc)
        return None

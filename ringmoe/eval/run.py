"""``ringmoe eval``: every encoder on every labelled set of the config, one results table and the plots.

Output directory::

    results.md / results.json       one row per task, encoder and metric: mean ± std over folds (or the test
                                    score with its interval), chance, n; on fixed splits, the paired difference
                                    to each reference encoder (random init, pixel statistics) with its interval
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
from ringmoe.eval.encoder import EncoderUnavailable, FrozenEncoder
from ringmoe.eval.features import load_encoder
from ringmoe.eval.plots import embedding_png, pca_2d, per_class_png, tsne_2d
from ringmoe.eval.report import Result, confusion_png, write_results
from ringmoe.eval.tasks import TASKS, SplitPredictions, TaskOutcome, paired_differences

log = logging.getLogger(__name__)


@dataclass
class EvalReport:
    results: list[Result]
    notes: list[str]
    out_dir: Path
    plots: list[Path] = field(default_factory=list)
    encoders: dict[str, str] = field(default_factory=dict)  # source -> its rows' encoder name, for those loaded

    def table(self) -> str:
        return (self.out_dir / "results.md").read_text()


def load_task_data(task: EvalTaskConfig, index: int, config_dir: Path) -> LabelledSet:
    if task.dataset not in ADAPTERS:
        raise ConfigError(f"eval.tasks[{index}].dataset {task.dataset!r} not in {sorted(ADAPTERS)}")
    adapter = ADAPTERS[task.dataset]

    def resolve(path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else config_dir / path

    root = resolve(task.root)
    options = dict(task.options)
    if task.extra_sources:
        options["extra_sources"] = [str(resolve(folder)) for folder in task.extra_sources]
    try:
        inspect.signature(adapter).bind(root, **options)
    except TypeError as exc:
        raise ConfigError(f"eval.tasks[{index}].options {dict(task.options)} for {task.dataset!r}: {exc}") from None
    data = adapter(root, **options)
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


def _check_finetune_tasks(config: EvalConfig, datasets: list[LabelledSet]) -> None:
    if not config.finetune.enabled:
        return
    with_splits = [data.name for data in datasets if data.kind == "scene" and data.split is not None]
    unknown = [name for name in config.finetune.tasks if name not in with_splits]
    if unknown:
        raise ConfigError(
            f"eval.finetune.tasks {unknown}: fine-tuning follows the fixed-split protocol, so it needs a scene set "
            f"with split files; those here: {with_splits}"
        )


def evaluate(config: EvalConfig, config_dir: Path, datasets: list[LabelledSet] | None = None) -> EvalReport:
    """Score every encoder of ``config`` on every task; dataset roots resolve against ``config_dir``.
    ``datasets``: labelled sets already loaded, scored instead of ``config.tasks`` (for callers that score many
    encoders on one load, like the ensemble ablation)."""
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", to_yaml(config))
    if datasets is None:
        datasets = [load_task_data(task, index, config_dir) for index, task in enumerate(config.tasks)]
    _check_finetune_tasks(config, datasets)
    notes = [
        f"{data.name}: {len(data)} samples ({data.sensor}); left out {data.skipped}"
        for data in datasets
        if data.skipped
    ]
    results: list[Result] = []
    plots: list[Path] = []
    names: dict[str, str] = {}
    tested: dict[tuple[int, str], tuple[list[Result], SplitPredictions]] = {}  # (set, encoder name) on fixed splits
    progress = tqdm(total=len(config.encoders) * len(datasets), desc="eval", unit="task")
    for source in config.encoders:
        try:
            encoder = load_encoder(source).to(config.device)
        except EncoderUnavailable as exc:
            notes.append(f"skipped encoder {source}: {exc}")
            progress.update(len(datasets))
            continue
        if encoder.name in names.values():  # e.g. runs/a/consolidated and runs/b/consolidated: rows must differ
            encoder.name = f"{encoder.name} ({source})"
        names[source] = encoder.name
        pooled, sensors = [], []
        folder = out_dir / "plots" / _slug(encoder.name)
        for index, data in enumerate(datasets):
            progress.set_postfix_str(f"{encoder.name[:30]} / {data.name[:30]}")
            outcome = _run_task(encoder, data, config, notes)
            progress.update(1)
            if outcome is None:
                continue
            results += outcome.results
            notes += outcome.notes
            if outcome.test is not None:
                tested[(index, encoder.name)] = (outcome.results, outcome.test)
            if config.plots:
                plots += _task_plots(outcome, data, folder, config)
            if data.kind in ("scene", "multilabel"):  # dense tasks reuse these images: count each image once
                pooled.append(outcome.pooled)
                sensors += [data.sensor] * len(outcome.pooled)
        if config.plots and len(set(sensors)) > 1 and len({p.shape[1] for p in pooled}) == 1:
            title = f"{encoder.name}: all sets by sensor"
            plots += _embedding_plots(torch.cat(pooled), sensors, title, folder / "sensors", config.tsne, config.seed)
    progress.close()
    _compare_with_references(tested, [names[s] for s in config.reference_sources() if s in names], config)
    write_results(results, out_dir, notes)
    return EvalReport(results, notes, out_dir, plots, names)


def _compare_with_references(
    tested: dict[tuple[int, str], tuple[list[Result], SplitPredictions]], references: list[str], config: EvalConfig
) -> None:
    """Every encoder's fixed-split rows get their paired difference to each reference encoder scored on the
    same set (once all encoders are scored: a reference may come after the encoders compared with it)."""
    for reference in references:
        for (index, name), (rows, test) in tested.items():
            if name != reference and (index, reference) in tested:
                paired_differences(rows, test, tested[(index, reference)][1], reference, config)


def _run_task(encoder: FrozenEncoder, data: LabelledSet, config: EvalConfig, notes: list[str]) -> TaskOutcome | None:
    try:
        return TASKS[data.kind](encoder, data, config)
    except EncoderUnavailable as exc:
        notes.append(f"skipped {data.name} for {encoder.name}: {exc}")
        log.warning("skipped %s for %s: %s", data.name, encoder.name, exc)
        return None

"""Representation quality on EuroSAT: the given encoders beside random init of the same architecture and pixel
statistics, scored by `ringmoe eval` itself (configs/eval/eurosat.yaml), one table with intervals and paired
differences, then the goals with PASS/FAIL.

    python -m benchmarks.representation --encoders runs/x/consolidated [more ...] [--config <model or run yaml>]
        [--limit-per-class N] [--output-dir runs/representation] [--no-finetune] [--device cuda]

Rows (overall accuracy): EuroSAT RGB test (5,400 scenes) with a linear probe on 100 % and on 1 % of train, kNN
(k = 20) on 100 %, and the short fine-tune when the config enables it; the EuroSAT MS subset (270 scenes, no
split files: 3-fold CV) with a linear probe and kNN. Δ columns: the encoder's score minus the reference's with a
paired 95 % bootstrap interval on the RGB test split; on MS the difference of the fold means.

Random init is of ``--config`` (a model or run YAML), by default of the first encoder's own architecture (a
consolidated directory's ``ringmoe_model.json``, a checkpoint's ``config.yaml``). Goals, per encoder: RGB linear
probe >= random + 0.10 and >= pixels + 0.15; kNN >= random + 0.10; 1 % linear probe >= random + 0.10 (point
differences, interval shown); MS linear probe mean not below random init's. With several encoders (checkpoints
of one run) the scores are also listed against the training step, read from each directory's metadata
(``ringmoe_meta.json``, or the consolidated index's ``global_step<N>`` source), else in the order given.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME
from ringmoe.checkpoint.safetensors_io import INDEX_NAME
from ringmoe.checkpoint.save import META_NAME, TAG, read_meta
from ringmoe.config.evaluation import EvalConfig, load_eval_config
from ringmoe.core.errors import ConfigError
from ringmoe.eval.report import Result
from ringmoe.eval.run import EvalReport, evaluate

REPO = Path(__file__).resolve().parents[1]
EVAL_CONFIG = REPO / "configs" / "eval" / "eurosat.yaml"
RGB, MS = "EuroSAT RGB", "EuroSAT MS (subset)"  # the task names of EVAL_CONFIG
PIXELS = "pixels"
METRIC = "accuracy"  # overall accuracy, the number published EuroSAT results give


@dataclass
class Row:
    label: str
    task_prefix: str  # Result.task starts with it (the train count follows)


ROWS = [
    Row("RGB linear probe, 100%", f"{RGB} (linear probe, 100% labels"),
    Row("RGB kNN k=20, 100%", f"{RGB} (kNN, 100% labels"),
    Row("RGB linear probe, 1%", f"{RGB} (linear probe, 1% labels"),
    Row("RGB fine-tune, 100%", f"{RGB} (fine-tune, 100% labels"),
    Row("MS linear probe, 3-fold", f"{MS} (linear probe)"),
    Row("MS kNN k=20, 3-fold", f"{MS} (kNN)"),
]
# (row label, reference, least difference): the goals on point differences.
GOALS = [
    ("RGB linear probe, 100%", "random", 0.10),
    ("RGB linear probe, 100%", "pixels", 0.15),
    ("RGB kNN k=20, 100%", "random", 0.10),
    ("RGB linear probe, 1%", "random", 0.10),
    ("MS linear probe, 3-fold", "random", 0.0),
]


def random_init_source(encoders: list[str], config: Optional[str]) -> str:
    """``random:<yaml>`` of ``config``, else of the first encoder's own architecture."""
    if config:
        return f"random:{config}"
    first = encoders[0]
    if first.startswith("random:"):
        return "random:" + first.removeprefix("random:").partition("@")[0]  # seed 0 of the same architecture
    path = Path(first)
    if (path / MODEL_CONFIG_NAME).is_file():
        return f"random:{path / MODEL_CONFIG_NAME}"
    if (path / META_NAME).is_file():
        return f"random:{path / 'config.yaml'}"
    raise ConfigError(f"{first}: neither {MODEL_CONFIG_NAME} nor {META_NAME} in it; pass --config <model yaml>")


def training_step(source: str) -> Optional[int]:
    """The step a checkpoint or consolidated directory was saved at, when its metadata says."""
    path = Path(source)
    if (path / META_NAME).is_file():
        return int(read_meta(path)["step"])
    if (path / INDEX_NAME).is_file():
        match = TAG.match(json.loads((path / INDEX_NAME).read_text())["metadata"].get("source", ""))
        return int(match.group(1)) if match else None
    return None


def build_config(args: argparse.Namespace, random_source: str) -> EvalConfig:
    """configs/eval/eurosat.yaml with the benchmark's encoders, references and budget."""
    config = load_eval_config(EVAL_CONFIG)
    names = [task.name for task in config.tasks]
    if RGB not in names or MS not in names:
        raise ConfigError(f"{EVAL_CONFIG}: tasks {names} must include {RGB!r} and {MS!r}")
    encoders = [s for s in args.encoders if s not in (random_source, PIXELS)]
    config.encoders = encoders + [random_source, PIXELS]
    config.references = [random_source, PIXELS]
    config.label_fractions = [0.01, 1.0]
    config.output_dir = str(args.output_dir)
    config.plots = False  # t-SNE of 27,000 scenes per encoder would take longer than the scores
    config.device = args.device
    config.finetune.enabled = config.finetune.enabled and not args.no_finetune
    if args.limit_per_class:
        for task in config.tasks:
            task.options["limit_per_class"] = args.limit_per_class
    config.validate()
    return config


def _find(report: EvalReport, encoder: str, row: Row) -> Optional[Result]:
    name = report.encoders.get(encoder)
    found = [
        r for r in report.results if r.encoder == name and r.metric == METRIC and r.task.startswith(row.task_prefix)
    ]
    return found[0] if found else None


def difference(report: EvalReport, encoder: str, reference: str, row: Row) -> tuple[Optional[float], str]:
    """(point difference, text): paired with its interval on the fixed split, of fold means on MS."""
    mine, theirs = _find(report, encoder, row), _find(report, reference, row)
    name = report.encoders.get(reference, reference)
    if mine is not None and name in mine.differences:
        return mine.differences[name].score, mine.difference_text(name)
    if mine is None or theirs is None or encoder == reference:
        return None, ""
    return mine.mean - theirs.mean, f"{mine.mean - theirs.mean:+.3f} ({'fold means' if mine.folds else 'unpaired'})"


def table(report: EvalReport, encoders: list[str], references: dict[str, str]) -> list[str]:
    lines = [
        "| row | encoder | accuracy | " + " | ".join(f"Δ {kind}" for kind in references) + " |",
        "|---|---|---|" + "---|" * len(references),
    ]
    for row in ROWS:
        for encoder in encoders:
            result = _find(report, encoder, row)
            if result is None:
                continue
            deltas = [difference(report, encoder, source, row)[1] for source in references.values()]
            lines.append(f"| {row.label} | {result.encoder} | {result.score_text()} | " + " | ".join(deltas) + " |")
    return lines


def goals(report: EvalReport, encoders: list[str], references: dict[str, str]) -> list[str]:
    labelled = {row.label: row for row in ROWS}
    lines = []
    for encoder in encoders:
        for label, kind, least in GOALS:
            value, text = difference(report, encoder, references[kind], labelled[label])
            goal = f"{label}: {report.encoders.get(encoder, encoder)} >= {kind} + {least:.2f}"
            if value is None:
                lines.append(f"n/a   {goal} (no score: see the notes in results.md)")
            else:
                lines.append(f"{'PASS' if value >= least else 'FAIL'}  {goal}: Δ {text}")
    return lines


def trend(report: EvalReport, encoders: list[str], random_source: str) -> list[str]:
    """Scores against training step (random init as the start), for checkpoints of one run."""
    steps = [training_step(source) for source in encoders]
    known = all(step is not None for step in steps)
    order = sorted(range(len(encoders)), key=lambda i: steps[i]) if known else list(range(len(encoders)))
    header = f"| {'step' if known else 'order given'} | encoder | " + " | ".join(row.label for row in ROWS) + " |"
    lines = [header, "|---|---|" + "---|" * len(ROWS)]
    points = [("init", random_source)] + [(str(steps[i] if known else i + 1), encoders[i]) for i in order]
    for position, source in points:
        scores = [_find(report, source, row) for row in ROWS]
        cells = [f"{r.mean:.3f}" if r is not None else "" for r in scores]
        lines.append(f"| {position} | {report.encoders.get(source, source)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", required=True, help="encoder sources, as `ringmoe eval` takes them")
    parser.add_argument("--config", help="model or run YAML of random init (default: the first encoder's)")
    parser.add_argument("--limit-per-class", type=int, default=0, help="scenes per class and split, for a quick pass")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/representation"))
    parser.add_argument("--no-finetune", action="store_true", help="leave out the fine-tune row")
    parser.add_argument("--device", default="cpu", help="where encoders run and fine-tune, e.g. cuda")
    args = parser.parse_args()
    random_source = random_init_source(args.encoders, args.config)
    config = build_config(args, random_source)
    report = evaluate(config, EVAL_CONFIG.parent)
    encoders = [s for s in config.encoders if s not in config.references and s in report.encoders]
    references = {"random": random_source, "pixels": PIXELS}
    scope = f", {args.limit_per_class} scenes per class and split" if args.limit_per_class else ""
    lines = [f"EuroSAT representation benchmark ({METRIC}; 95% intervals{scope})", ""]
    lines += table(report, encoders + [random_source, PIXELS], references)
    lines += ["", "Goals:"] + goals(report, encoders, references)
    if len(encoders) > 1:
        lines += ["", "Scores against training step:"] + trend(report, encoders, random_source)
    lines += ["", *[f"- {note}" for note in report.notes], f"full table: {report.out_dir / 'results.md'}"]
    text = "\n".join(lines)
    (report.out_dir / "representation.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

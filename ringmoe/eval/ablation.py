"""Greedy specialist ablation of an exported Ensemble-of-Specialists, scored by the evaluation runner (it sits
above ``run``, which loads the ensemble through ``features``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ringmoe.eval.run import evaluate, load_task_data
from ringmoe.recipes.eos.ablation import ablation_path


def ablation(
    export_dir: Path,
    config,
    config_dir: Path,
    metrics: tuple[str, ...] = ("balanced accuracy", "mAP (sample-averaged)"),
):
    """Greedy pruning of an exported ensemble: each step drops the specialist whose removal costs the least
    score. The score is the mean of the linear-probe ``metrics`` over the config's tasks; a task the pruned
    ensemble can no longer take (its sensor's specialist is gone) counts at its chance level. Returns the
    ``ablation_path`` (kept specialists, score, parameters)."""
    records = json.loads((export_dir / "combiner" / "config.json").read_text())["specialists"]
    chance: dict[tuple[str, str], float] = {}
    # Loaded once for every subset scored; only the image-level sets give linear-probe rows.
    loaded = [load_task_data(task, index, config_dir) for index, task in enumerate(config.tasks)]
    image_level = [data for data in loaded if data.kind in ("scene", "multilabel")]

    def score(kept: tuple[str, ...]) -> float:
        dropped = ",".join(n for n in records if n not in kept)
        source = f"ensemble:{export_dir}" + (f"@{dropped}" if dropped else "")
        out = Path(config.output_dir) / "ablation" / (dropped.replace(",", "+") or "all")
        run_config = dataclasses.replace(config, encoders=[source], output_dir=str(out), plots=False)
        report = evaluate(run_config, config_dir, image_level)
        rows = {(r.task, r.metric): r for r in report.results if r.metric in metrics and "linear probe" in r.task}
        if not chance:  # the full ensemble (scored first) fixes the task list
            chance.update({key: row.chance for key, row in rows.items()})
        return sum(rows[key].mean if key in rows else level for key, level in chance.items()) / len(chance)

    return ablation_path(list(records), {n: r["parameters"] for n, r in records.items()}, score)

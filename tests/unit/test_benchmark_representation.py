"""benchmarks/representation.py's own logic, without scoring anything: which random init it builds, which step a
checkpoint was saved at, and how goals read the paired differences (PASS/FAIL on the point difference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.representation import GOALS, ROWS, goals, random_init_source, training_step, trend
from ringmoe.core.errors import ConfigError
from ringmoe.eval.protocol import Interval
from ringmoe.eval.report import Result
from ringmoe.eval.run import EvalReport


def test_random_init_and_training_step_come_from_the_encoder_directories(tmp_path: Path) -> None:
    consolidated, checkpoint, other = tmp_path / "consolidated", tmp_path / "global_step400", tmp_path / "other"
    for folder in (consolidated, checkpoint, other):
        folder.mkdir()
    (consolidated / "ringmoe_model.json").write_text("{}")
    index = {"metadata": {"source": "global_step200", "format": "ringmoe-consolidated"}, "weight_map": {}}
    (consolidated / "model.safetensors.index.json").write_text(json.dumps(index))
    (checkpoint / "ringmoe_meta.json").write_text(json.dumps({"step": 400}))

    assert random_init_source([str(consolidated)], None) == f"random:{consolidated / 'ringmoe_model.json'}"
    assert random_init_source([str(checkpoint)], None) == f"random:{checkpoint / 'config.yaml'}"
    assert random_init_source(["random:configs/tiny.yaml@3"], None) == "random:configs/tiny.yaml"
    assert random_init_source([str(other)], "configs/tiny.yaml") == "random:configs/tiny.yaml"
    with pytest.raises(ConfigError, match="pass --config"):
        random_init_source([str(other)], None)
    assert [training_step(str(p)) for p in (consolidated, checkpoint, other)] == [200, 400, None]


def test_goals_pass_on_the_paired_point_difference_and_the_trend_follows_steps(tmp_path: Path) -> None:
    names = {"ckpt": "consolidated ckpt", "random:x": "random init", "pixels": "pixel statistics"}

    def row(task: str, encoder: str, mean: float, **differences: float) -> Result:
        result = Result(task, names[encoder], "accuracy", mean, 0.01, 100, 0, 0.1, mean - 0.02, mean + 0.02)
        labels = {"random": "random init", "pixels": "pixel statistics"}
        result.differences = {labels[k]: Interval(v, v - 0.03, v + 0.03, 0.01) for k, v in differences.items()}
        return result

    rgb = {r.label: r.task_prefix for r in ROWS}
    results = [
        row(rgb["RGB linear probe, 100%"] + ", 80 train)", "ckpt", 0.8, random=0.12, pixels=0.14),
        row(rgb["RGB linear probe, 100%"] + ", 80 train)", "random:x", 0.68),
        row(rgb["RGB kNN k=20, 100%"] + ", 80 train)", "ckpt", 0.7, random=0.09),
        row(rgb["RGB kNN k=20, 100%"] + ", 80 train)", "random:x", 0.61),
        Result(rgb["MS linear probe, 3-fold"], names["ckpt"], "accuracy", 0.50, 0.02, 30, 3, 0.1),
        Result(rgb["MS linear probe, 3-fold"], names["random:x"], "accuracy", 0.50, 0.02, 30, 3, 0.1),
    ]
    report = EvalReport(results, [], tmp_path, [], names)
    lines = goals(report, ["ckpt"], {"random": "random:x", "pixels": "pixels"})
    assert len(lines) == len(GOALS)
    assert lines[0].startswith("PASS  RGB linear probe, 100%: consolidated ckpt >= random + 0.10: Δ +0.120 [+0.090")
    assert lines[1].startswith("FAIL  RGB linear probe, 100%: consolidated ckpt >= pixels + 0.15: Δ +0.140")
    assert lines[2].startswith("FAIL  RGB kNN") and lines[3].startswith("n/a   RGB linear probe, 1%")
    assert lines[4] == "PASS  MS linear probe, 3-fold: consolidated ckpt >= random + 0.00: Δ +0.000 (fold means)"

    # Two checkpoints given newest first: the trend lists random init, then them by step (no metadata here, so
    # in the order given).
    names["late"] = "consolidated late"
    results.append(row(rgb["RGB linear probe, 100%"] + ", 80 train)", "late", 0.9))
    lines = trend(EvalReport(results, [], tmp_path, [], names), ["late", "ckpt"], "random:x")
    assert lines[0].startswith("| order given | encoder | RGB linear probe, 100% |")
    assert [line.split(" | ")[:3] for line in lines[2:]] == [
        ["| init", "random init", "0.680"],
        ["| 1", "consolidated late", "0.900"],
        ["| 2", "consolidated ckpt", "0.800"],
    ]

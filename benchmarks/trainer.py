"""Trainer overheads, side by side in one run (2 processes, EP=2, the tiny config on the demo shards):

- step time with the metric callbacks (throughput/MFU, router load + all-reduce, accounting) ÷ without
  (issue goal <= 1.03), from the wall clock between consecutive steps (saves excluded);
- checkpoint save time ÷ step time (a save: DeepSpeed model/optimizer + per-expert files, loader and RNG state,
  meta, atomic rename).

    python benchmarks/trainer.py [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _train(shards: Path, out: Path, steps: int, callbacks: bool, save_every: int) -> list[dict]:
    from tests.distributed.spawn import free_port

    metric_callbacks = "[throughput,router_load,accounting]" if callbacks else "[]"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
        f"data.shards={shards}", f"train.output_dir={out}", f"train.steps={steps}",
        f"train.callbacks={metric_callbacks}", f"train.save_every={save_every}", "train.keep_last=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _step_times(rows: list[dict]) -> list[float]:
    """Wall time between consecutive steps, leaving out the first steps (warm-up) and steps that saved."""
    times = []
    for before, row in zip(rows, rows[1:]):
        if row["step"] > 3 and "checkpoint/save_s" not in row:
            times.append(row["elapsed_s"] - before["elapsed_s"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from data_pipeline.build import build_from_file

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_from_file(REPO / "configs" / "data" / "demo_build.yaml", [f"out_dir={shards}"])
        runs = {}
        # Interleaved (off, on, off, on) so that drift of a shared machine hits both sides alike.
        for index, callbacks in enumerate([False, True, False, True]):
            rows = _train(shards, Path(tmp) / f"run{index}", args.steps, callbacks, save_every=10)
            runs.setdefault(callbacks, []).append(rows)
    off = statistics.median(t for rows in runs[False] for t in _step_times(rows))
    on = statistics.median(t for rows in runs[True] for t in _step_times(rows))
    saves = [
        row["checkpoint/save_s"] for rows in runs[True] + runs[False] for row in rows if "checkpoint/save_s" in row
    ]
    save = statistics.median(saves)
    print(f"trainer step, callbacks on ÷ off: {on * 1e3:.1f} ms ÷ {off * 1e3:.1f} ms = x{on / off:.3f} (goal <= 1.03)")
    print(f"checkpoint save ÷ step: {save * 1e3:.0f} ms ÷ {off * 1e3:.1f} ms = x{save / off:.1f} ({len(saves)} saves)")


if __name__ == "__main__":
    main()

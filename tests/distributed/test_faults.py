"""Faults in training on 2 real processes under DeepSpeed EP=2: a micro-batch whose loss is NaN/inf on one rank
is dropped on every rank (no update from it, counted) and the next batch takes its place; too many in a row
abort with a clear error; a rank that dies fails the job fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.spawn import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def _train_with_nan_losses(rank: int, world: int, shards: str, out: str, nan_steps: list[int], limit: int) -> None:
    import ringmoe.recipes.simmim as simmim
    import ringmoe.train.loop as loop
    from ringmoe.config.schema import load_config
    from ringmoe.core.errors import TrainingError

    real_build = simmim.build_objective  # the RingMoE recipe's prepare() builds the objective through it

    def build_objective(*args, **kwargs):
        objective = real_build(*args, **kwargs)
        calls = {"step": 0}

        class NaNOnSomeSteps:
            masks = objective.masks

            def __call__(self, *call_args):
                calls["step"] += 1
                loss, metrics = objective(*call_args)
                # Only rank 1's loss goes bad: rank 0 must skip the step all the same.
                if calls["step"] in nan_steps and rank == 1:
                    loss = loss * float("nan")
                return loss, metrics

        return NaNOnSomeSteps()

    simmim.build_objective = build_objective
    overrides = [
        f"data.shards={shards}", f"train.output_dir={out}", "train.steps=5", "parallel.expert_parallel_size=2",
        f"train.max_nonfinite_steps={limit}", "train.warmup_steps=4",  # lr rises on every real update
    ]  # fmt: skip
    config = load_config(REPO / "configs" / "tiny.yaml", overrides)
    if limit <= len(nan_steps):
        with pytest.raises(TrainingError, match=rf"loss NaN/inf for {limit} micro-batches in a row \(at step 2"):
            loop.train(config)
        return
    result = loop.train(config)
    assert result.nonfinite_steps == len(nan_steps) and len(result.losses) == 5
    assert all(value == value for value in result.losses)  # every optimizer step used good batches only


def test_nonfinite_loss_skips_the_batch_on_every_rank(demo_shards: Path, tmp_path: Path) -> None:
    run_distributed(_train_with_nan_losses, 2, str(demo_shards), str(tmp_path / "skip"), [2, 3], 5, timeout=400)
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [row["nonfinite_steps"] for row in rows] == [0, 2, 2, 2, 2]
    # The schedule advanced once per optimizer step (warm-up: +1/4 of the peak each), skipped batches or not.
    assert [round(row["lr"] / 0.002, 6) for row in rows[:3]] == [0.5, 0.75, 1.0]
    # Two batches were replaced: each rank's loader handed out 5 + 2.
    state = json.loads((tmp_path / "skip" / "checkpoints" / "global_step5" / "data_state_rank00000.json").read_text())
    assert state["batches"] == 7


def test_too_many_nonfinite_steps_in_a_row_abort(demo_shards: Path, tmp_path: Path) -> None:
    run_distributed(_train_with_nan_losses, 2, str(demo_shards), str(tmp_path / "abort"), [2, 3], 2, timeout=400)


def test_a_dead_rank_fails_the_job_fast(demo_shards: Path, tmp_path: Path) -> None:
    """SIGKILL one of two trainers mid-run: torchrun notices and ends the other, so the job fails in seconds
    instead of the survivor hanging in a collective."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.distributed.spawn import free_port

    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
        f"data.shards={demo_shards}", f"train.output_dir={run}", "train.steps=5000",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        trainers = [w for w in workers if "ringmoe.cli.main" in " ".join(w.cmdline()) or w.name().startswith("python")]
        assert len(trainers) >= 2, [w.cmdline() for w in workers]
        killed_at = time.monotonic()
        os.kill(trainers[-1].pid, signal.SIGKILL)
        code = proc.wait(timeout=120)
        failed_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
    assert code != 0 and failed_after < 60, (code, failed_after)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in trainers)

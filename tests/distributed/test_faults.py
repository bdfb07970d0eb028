"""Faults in training: a NaN/inf loss skips the step on every rank (no update, counted), too many in a row abort
with a clear error; both on 2 real processes under DeepSpeed EP=2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed.spawn import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def _train_with_nan_losses(rank: int, world: int, shards: str, out: str, nan_steps: list[int], limit: int) -> None:
    import ringmoe.train.loop as loop
    from ringmoe.config.schema import load_config
    from ringmoe.core.errors import TrainingError

    real_build = loop.build_objective

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

    loop.build_objective = build_objective
    overrides = [
        f"data.shards={shards}", f"train.output_dir={out}", "train.steps=5", "parallel.expert_parallel_size=2",
        f"train.max_nonfinite_steps={limit}", "train.warmup_steps=4",  # lr rises on every real update
    ]  # fmt: skip
    config = load_config(REPO / "configs" / "tiny.yaml", overrides)
    if limit <= len(nan_steps):
        with pytest.raises(TrainingError, match=rf"loss NaN/inf for {limit} steps in a row \(up to step 3"):
            loop.train(config)
        return
    result = loop.train(config)
    assert result.nonfinite_steps == len(nan_steps)
    assert [step for step, value in enumerate(result.losses, 1) if value != value] == nan_steps


def test_nonfinite_loss_skips_the_step_on_every_rank(demo_shards: Path, tmp_path: Path) -> None:
    run_distributed(_train_with_nan_losses, 2, str(demo_shards), str(tmp_path / "skip"), [2, 3], 5, timeout=400)
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [row["nonfinite_steps"] for row in rows] == [0, 1, 2, 2, 2]
    # No update on a skipped step: the learning-rate schedule did not advance either.
    assert rows[1]["lr"] == rows[0]["lr"] and rows[2]["lr"] == rows[0]["lr"] and rows[3]["lr"] != rows[0]["lr"]
    assert torch.isfinite(torch.tensor([rows[i]["loss/total"] for i in (0, 3, 4)])).all()


def test_too_many_nonfinite_steps_in_a_row_abort(demo_shards: Path, tmp_path: Path) -> None:
    run_distributed(_train_with_nan_losses, 2, str(demo_shards), str(tmp_path / "abort"), [2, 3], 2, timeout=400)

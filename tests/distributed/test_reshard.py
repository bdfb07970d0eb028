"""Resharding between expert-parallel sizes: a checkpoint of EP=2 resumed as EP=1 (and EP=1 as EP=2) on the
same 2 processes gives, at its first step, the loss the original run had at that step (the weights, data
position and mask RNG carry over; only the Adam moments start fresh, which touches later steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed.test_resume import _command, _run
from tests.tolerances import tiny_loss_rtol

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("source_ep, target_ep", [(2, 1), (1, 2)])
def test_reshard_then_resume_continues_the_loss(demo_shards: Path, tmp_path: Path, source_ep: int, target_ep: int):
    original = tmp_path / "original"
    done = _run(_command(demo_shards, original, "train.save_every=3", f"parallel.expert_parallel_size={source_ep}"))
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _rows(original)

    resharded = tmp_path / "resharded" / "checkpoints" / "global_step3"
    cli = _run(["python", "-m", "ringmoe.cli.main", "reshard", str(original / "checkpoints" / "global_step3"),
                str(resharded), "--expert-parallel-size", str(target_ep)])  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    meta = json.loads((resharded / "ringmoe_meta.json").read_text())
    assert meta["expert_parallel_size"] == target_ep and meta["optimizer_states"] is False
    assert not list(resharded.glob("*optim_states.pt"))

    resumed = _run(_command(demo_shards, tmp_path / "resharded", f"parallel.expert_parallel_size={target_ep}",
                            "--resume", str(resharded)))  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    rows = _rows(tmp_path / "resharded")
    assert rows[0]["step"] == 4
    # Step 4's loss is computed from the step-3 weights before any update: the original run's loss, up to the
    # rounding of the other EP size's summation order (a forward pass only, no Adam in between).
    torch.testing.assert_close(rows[0]["loss/total"], reference[3]["loss/total"], rtol=tiny_loss_rtol(), atol=0)
    assert rows[-1]["step"] == 6 and all(r["loss/total"] == r["loss/total"] for r in rows)


def test_reshard_refuses_an_ep_that_does_not_divide_the_experts(demo_shards: Path, tmp_path: Path) -> None:
    from ringmoe.checkpoint.reshard import reshard
    from ringmoe.core.errors import CheckpointError

    run = tmp_path / "run"
    assert _run(_command(demo_shards, run, "train.steps=1")).returncode == 0
    with pytest.raises(CheckpointError, match=r"do not split over EP 3"):
        reshard(run / "checkpoints" / "global_step1", tmp_path / "out", 3)


@pytest.mark.parametrize("source_tp, target_tp", [(1, 2), (2, 1)])
def test_reshard_tensor_parallel_then_resume_continues_the_loss(demo_shards, tmp_path, source_tp, target_tp):
    """TP=1 on 1 process <-> TP=2 on 2 processes (one data rank either way): the model files are cut again for
    the new TP size and the resumed first step reproduces the original run's loss."""
    # As in test_tp2_trains_like_one_process: capacities even (no TP padding), no clipping.
    same = ["model.capacity_factor=1.25", "train.grad_clip=0", "parallel.expert_parallel_size=1"]

    def command(run: Path, tp: int, *extra: str) -> list[str]:
        launcher = _command(demo_shards, run, *same, f"parallel.tensor_parallel_size={tp}", *extra)
        return [part if part != "--nproc_per_node=2" else f"--nproc_per_node={tp}" for part in launcher]

    original = tmp_path / "original"
    done = _run(command(original, source_tp, "train.save_every=3"))
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _rows(original)
    target = tmp_path / "resharded" / "checkpoints" / "global_step3"
    cli = _run(["python", "-m", "ringmoe.cli.main", "reshard", str(original / "checkpoints" / "global_step3"),
                str(target), "--expert-parallel-size", "1", "--tensor-parallel-size", str(target_tp)])  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert sorted(p.name for p in target.glob("mp_rank_*")) == [
        f"mp_rank_{r:02d}_model_states.pt" for r in range(target_tp)
    ]
    resumed = _run(command(tmp_path / "resharded", target_tp, "--resume", str(target)))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    rows = _rows(tmp_path / "resharded")
    assert rows[0]["step"] == 4
    torch.testing.assert_close(rows[0]["loss/total"], reference[3]["loss/total"], rtol=tiny_loss_rtol(), atol=0)

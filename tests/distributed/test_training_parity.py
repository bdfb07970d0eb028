"""Training under DeepSpeed follows the same trajectory whatever the layout: EP=1 and EP=2 (2 processes each)
match step for step and consolidate to the same single-device weights; TP=2 (2 processes, megatron-core layers,
DeepSpeed given megatron-core's topology as ``mpu``) matches one process."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tolerances import TRAINING_DRIFT, assert_same_training, tiny_loss_rtol, weight_drift

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
STEPS = 4


def train_metrics(demo_shards: Path, output_dir: Path, ep: int, *overrides: str, processes: int = 2) -> list[dict]:
    from tests.distributed.spawn import free_port

    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={free_port()}",
        "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
        f"data.shards={demo_shards}", f"train.output_dir={output_dir}", f"train.steps={STEPS}",
        f"parallel.expert_parallel_size={ep}", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def consolidated_weights(run: Path, out: Path) -> dict[str, torch.Tensor]:
    from ringmoe.checkpoint.consolidate import consolidate
    from ringmoe.checkpoint.safetensors_io import read_sharded

    return read_sharded(consolidate(run / "checkpoints" / f"global_step{STEPS}", out))


def initial_weights() -> dict[str, torch.Tensor]:
    from ringmoe.config.schema import load_config
    from ringmoe.models.factory import build_model

    config = load_config(REPO / "configs" / "tiny.yaml")
    return build_model(config.model, seed=config.train.seed).state_dict()


def test_ep1_and_ep2_train_identically(demo_shards: Path, tmp_path: Path) -> None:
    """EP=2 sums expert gradients in another order than EP=1; Adam turns that rounding into weight differences
    (tests/tolerances.py), so the runs match within rounding at step 1 and within TRAINING_DRIFT after."""
    ep1 = train_metrics(demo_shards, tmp_path / "ep1", 1)
    ep2 = train_metrics(demo_shards, tmp_path / "ep2", 2)
    assert len(ep1) == STEPS and ep1[-1]["loss/total"] < ep1[0]["loss/total"]
    assert_same_training(ep2, ep1, tiny_loss_rtol())

    states = [consolidated_weights(tmp_path / run, tmp_path / f"{run}-consolidated") for run in ("ep1", "ep2")]
    assert states[0].keys() == states[1].keys()
    assert weight_drift(states[1], states[0], initial_weights()) <= TRAINING_DRIFT


def test_tp2_trains_like_one_process(demo_shards: Path, tmp_path: Path) -> None:
    """TP=2 sums the row-parallel products (and the column-parallel input gradients) over two all-reduced halves
    where one process sums them in one matmul: rounding at step 1, Adam's amplification of it after (see
    tests/tolerances.py; a fixed rtol of 2e-5 passed on one CPU and failed on another). The step-1 gradient norm is
    compared within rounding too: DeepSpeed counts each TP shard once and replicated tensors on TP rank 0 only."""
    # Capacity factor 1.25 keeps every capacity even (no TP padding, see DeepSpeedRoutedExperts). Clipping
    # off: Adam's first steps turn ~1e-7 rounding differences of near-zero gradients into sign flips, which a
    # clip factor of 0.1 (gradient norm 50 at step 1) then magnifies; the clipped norm is checked separately.
    same = ["model.capacity_factor=1.25", "train.grad_clip=0"]
    single = train_metrics(demo_shards, tmp_path / "tp1", 1, *same, processes=1)
    tp2 = train_metrics(demo_shards, tmp_path / "tp2", 1, *same, "parallel.tensor_parallel_size=2")
    assert len(tp2) == STEPS and single[0]["grad_norm"] > 0
    assert_same_training(tp2, single, tiny_loss_rtol())
    states = [consolidated_weights(tmp_path / run, tmp_path / f"{run}-consolidated") for run in ("tp1", "tp2")]
    assert weight_drift(states[1], states[0], initial_weights()) <= TRAINING_DRIFT


def test_gradient_accumulation_counts_optimizer_steps(demo_shards: Path, tmp_path: Path) -> None:
    """train.steps are optimizer steps: with 2 micro-batches each, the loader hands out twice as many batches
    and the LR schedule advances once per step, as without accumulation."""
    plain = train_metrics(demo_shards, tmp_path / "gas1", 2)
    accumulated = train_metrics(demo_shards, tmp_path / "gas2", 2, "train.gradient_accumulation_steps=2")
    assert [m["step"] for m in accumulated] == list(range(1, STEPS + 1))
    assert [m["lr"] for m in accumulated] == [m["lr"] for m in plain]
    state = json.loads(
        (tmp_path / "gas2" / "checkpoints" / f"global_step{STEPS}" / "data_state_rank00000.json").read_text()
    )
    assert state["batches"] == 2 * STEPS
    # The first micro-batch of step 1 is the same batch as plain step 1, so the two step-1 losses differ only
    # by the second micro-batch averaged in.
    assert accumulated[0]["loss/total"] != plain[0]["loss/total"]


def precision_supported(precision: str) -> bool:
    """What DeepSpeed's accelerator says of this machine: the CPU accelerator supports fp16 only on CPUs with
    native fp16 (AVX-512 FP16/AMX), so which branch of the test below runs depends on the machine."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return bool({"bf16": accelerator.is_bf16_supported, "fp16": accelerator.is_fp16_supported}[precision]())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_dynamic_loss_scaling(demo_shards: Path, tmp_path: Path, precision: str) -> None:
    if not precision_supported(precision):
        # The other branch is the product's answer on this machine: a config error before any engine.
        check_unsupported_precision_is_a_config_error(demo_shards, tmp_path, precision)
        return
    rows = train_metrics(demo_shards, tmp_path / precision, 2, f"train.precision={precision}")
    losses = [m["loss/total"] for m in rows]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    scales = [m["loss_scale"] for m in rows]
    if precision == "fp16":
        # DeepSpeed's dynamic scaler starts at 2^16 and halves on every overflowing (skipped) step.
        assert scales[0] == 2.0**16 and scales[-1] < scales[0]
    else:
        assert scales == [1.0] * STEPS and losses[-1] < losses[0]  # bf16 needs no loss scaling


def check_unsupported_precision_is_a_config_error(demo_shards: Path, tmp_path: Path, precision: str) -> None:
    """One process: exit code 2 like any config error. Under torchrun the first rank to fail exits 2 with the
    message and is named the root cause; torchrun then stops the other rank (SIGTERM if it has not exited 2 by
    then) and reports the failed child with its own exit code 1, as for any worker failure."""
    from tests.distributed.spawn import free_port

    expected = f"train.precision={precision} is not supported by the CPU accelerator on this machine; use "
    args = [
        "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
        f"data.shards={demo_shards}", f"train.output_dir={tmp_path / 'out'}", f"train.precision={precision}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert single.returncode == 2 and expected in single.stderr, single.stderr[-3000:]
    assert "Traceback" not in single.stderr and "fp32" in single.stderr.splitlines()[-1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    launched = subprocess.run([*launcher, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = launched.stdout + launched.stderr
    assert launched.returncode != 0 and expected in output, output[-3000:]
    root_cause = output.partition("Root Cause")[2]
    assert re.search(r"exitcode\s+:\s+2\b", root_cause), output[-3000:]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_tp2_checkpoint_consolidates_to_the_single_device_weights(demo_shards: Path, tmp_path: Path) -> None:
    """Two mp_rank files per tensor, TP slices put back by ``parallel.tp_layout``: with a learning rate too small
    to move any fp32 weight, the consolidated TP=2 checkpoint must equal the model's initial weights exactly
    (a wrong slice or order would show at once)."""
    from ringmoe.checkpoint.consolidate import consolidate
    from ringmoe.checkpoint.safetensors_io import read_sharded
    from ringmoe.config.schema import load_config
    from ringmoe.models.factory import build_model

    frozen = ["train.lr=1e-30", "train.min_lr=1e-30", "parallel.tensor_parallel_size=2"]
    train_metrics(demo_shards, tmp_path / "tp2", 1, *frozen)
    tag = tmp_path / "tp2" / "checkpoints" / f"global_step{STEPS}"
    assert (tag / "mp_rank_01_model_states.pt").is_file()
    state = read_sharded(consolidate(tag, tmp_path / "consolidated"))
    config = load_config(REPO / "configs" / "tiny.yaml")
    initial = build_model(config.model, seed=config.train.seed).state_dict()
    assert state.keys() == initial.keys()
    for name, tensor in initial.items():
        # atol: zero-initialised biases do move, by ~lr (1e-30); weights of scale 0.02 cannot.
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-20, msg=lambda m, n=name: f"{n}: {m}")

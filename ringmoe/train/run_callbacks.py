"""The callbacks every run has, after the metric callbacks: ``Checkpointing`` (periodic, on preemption and
final saves), ``MetricsSink`` (JSONL, TensorBoard and the progress bar on rank 0) and ``PreemptionMarker``
(the file ``slurm/train.sbatch`` requeues on)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ringmoe.checkpoint.save import save_checkpoint
from ringmoe.config.schema import RunConfig
from ringmoe.core.files import atomic_write_json
from ringmoe.train import rng
from ringmoe.train.callbacks import Callback, StepInfo, callback_states
from ringmoe.train.metrics import MetricLogger
from ringmoe.train.preemption import PREEMPTED_MARKER

log = logging.getLogger(__name__)


class Checkpointing(Callback):
    """Saves every ``train.save_every`` steps (not at the last one), after a step the ranks agreed to stop at,
    and at the end; ``result.checkpoint`` is the last one (a resumed run with nothing to do: where it resumed).
    Collective: every rank runs it. The checkpoint carries ``callbacks``' states and their ``on_save`` files."""

    name = "checkpointing"

    def __init__(self, engine, config: RunConfig, loader, generator, callbacks, result, resumed_from) -> None:
        self.engine, self.config, self.loader, self.generator = engine, config, loader, generator
        # The callbacks before this one (a copy: the caller's list goes on to hold this one and the sinks).
        self.callbacks, self.result, self.resumed_from = list(callbacks), result, resumed_from
        self.root = Path(config.train.output_dir) / "checkpoints"

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        every, last = self.config.train.save_every, self.config.train.steps
        if info.stop_reason or (every and info.step % every == 0 and info.step != last):
            tick = time.perf_counter()
            self.result.checkpoint = self.save(info.step)
            metrics["checkpoint/save_s"] = time.perf_counter() - tick

    def on_train_end(self, step: int) -> None:
        ran = step > self.result.start_step or self.resumed_from is None
        self.result.checkpoint = self.save(step) if ran else self.resumed_from

    def save(self, step: int) -> Path:
        def write_extra(directory: Path) -> None:
            for callback in self.callbacks:
                callback.on_save(directory)

        return save_checkpoint(
            self.engine, self.config, self.root, step, self.loader.state_dict(), rng.capture(self.generator),
            extra_meta={"callbacks": callback_states(self.callbacks)}, write_extra=write_extra,
        )  # fmt: skip


class MetricsSink(Callback):
    """Adds the wall clock since ``started`` and writes the step's metrics (rank 0 only); runs after every
    callback that adds metrics."""

    name = "metrics_sink"

    def __init__(self, config: RunConfig, start_step: int, started: float) -> None:
        enabled = dist.get_rank() == 0
        self.logger = MetricLogger(Path(config.train.output_dir), config.train.steps, start_step, enabled)
        self.started = started

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        metrics["elapsed_s"] = time.perf_counter() - self.started  # wall clock, for step-time analysis
        self.logger.log(info.step, metrics)

    def close(self) -> None:
        self.logger.close()


class PreemptionMarker(Callback):
    """After a step the ranks agreed to stop at, rank 0 writes ``PREEMPTED`` (step and reason) beside the
    checkpoints, for the batch script's requeue; a run that completes removes it."""

    name = "preemption_marker"

    def __init__(self, config: RunConfig, result) -> None:
        self.path = Path(config.train.output_dir) / PREEMPTED_MARKER
        self.result = result

    def on_step(self, info: StepInfo, metrics: dict[str, float]) -> None:
        if info.stop_reason and dist.get_rank() == 0:
            atomic_write_json(self.path, {"step": info.step, "reason": info.stop_reason})
            log.warning("preempted (%s): saved %s; exiting for a requeue", info.stop_reason, self.result.checkpoint)

    def on_train_end(self, step: int) -> None:
        if dist.get_rank() == 0:
            self.path.unlink(missing_ok=True)


def run_callbacks(engine, config: RunConfig, loader, generator: torch.Generator, callbacks, result, start, started):
    """The three, in order, after ``callbacks`` (whose states and ``on_save`` files the checkpoints carry)."""
    return [
        Checkpointing(engine, config, loader, generator, callbacks, result, start.resume_from),
        MetricsSink(config, result.start_step, started),
        PreemptionMarker(config, result),
    ]

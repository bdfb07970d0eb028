"""The training loop: the DeepSpeed engine over the parallelized model of the config's recipe
(``ringmoe.recipes.registry``), optimizer steps of the recipe's micro-batches, and callbacks for everything else:
the metric callbacks ``train.callbacks`` names, then checkpointing, metric sinks and the preemption marker
(``ringmoe.train.run_callbacks``). Where the run starts (resume, init-from, fresh): ``ringmoe.train.start``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import TrainingError
from ringmoe.data.loader import build_loader
from ringmoe.parallel.distributed import init_distributed
from ringmoe.parallel.engine import build_engine, check_precision_supported
from ringmoe.parallel.parallelize import parallelize
from ringmoe.parallel.topology import init_topology
from ringmoe.recipes.registry import recipe_of, validate_run
from ringmoe.train.callbacks import Callback, StepInfo, check_callback_names, metric_callbacks
from ringmoe.train.preemption import PreemptionWatch
from ringmoe.train.run_callbacks import run_callbacks
from ringmoe.train.start import StartPoint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean over ranks, one per step run by this process
    checkpoint: Path | None = None
    seconds: float = 0.0
    start_step: int = 0  # the step resumed from (0: fresh)
    preempted: bool = False
    nonfinite_steps: int = 0
    engine: object = None  # the DeepSpeed engine, for evaluation after training (callers in the same process)


def train(config: RunConfig, extra_callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run ``config`` on this process's rank. ``extra_callbacks``: built by a caller above this layer (the online
    probe, from ``ringmoe.eval``); they run after ``train.callbacks``, before checkpointing and the metric sinks."""
    validate_run(config)  # before any process group: config errors first
    check_callback_names(list(config.train.callbacks))
    check_precision_supported(config.train.precision)
    start = StartPoint.of(config)
    recipe = recipe_of(config.model)
    prepared = recipe.prepare(config)
    init_distributed()
    topology = init_topology(config.parallel.tensor_parallel_size, config.parallel.expert_parallel_size)
    started = time.perf_counter()
    model = parallelize(start.single_device_model(config), topology, config.model.activation_checkpointing)
    recipe.after_parallelize(model)
    engine = build_engine(model, config, topology.data_parallel_size, topology.mpu)
    # Data (and masks) follow the data-parallel rank: the ranks of one TP group work on the same samples.
    loader = build_loader(config.data, topology.data_rank, topology.data_parallel_size)
    mask_rng = torch.Generator().manual_seed(config.train.seed * 1_000_003 + topology.data_rank)
    callbacks = metric_callbacks(config, recipe.flops_per_sample(config.model), dist.get_world_size())
    callbacks += list(extra_callbacks)
    for callback in callbacks:
        callback.on_train_begin(engine.module)
    result = TrainResult(start_step=start.restore(engine, loader, mask_rng, callbacks, config))
    callbacks += run_callbacks(engine, config, loader, mask_rng, callbacks, result, start, started)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision, torch.float32)
    recipe_step = recipe.build_step(config, prepared, mask_rng, engine.device, dtype, topology.data_parallel_group())
    micro = _MicroBatches(engine, recipe_step, iter(loader), config, topology.data_parallel_size)
    step = result.start_step
    try:
        while step < config.train.steps and not result.preempted:
            step += 1
            info, metrics = micro.optimizer_step(step)
            result.losses.append(metrics["loss/total"])
            result.nonfinite_steps, result.preempted = micro.nonfinite_total, bool(info.stop_reason)
            for callback in callbacks:
                callback.on_step(info, metrics)
        if not result.preempted:
            for callback in callbacks:
                callback.on_train_end(step)
    finally:
        micro.close()
        for callback in callbacks:
            callback.close()
    result.seconds, result.engine = time.perf_counter() - started, engine
    return result


@dataclass
class _StepOutcome:
    loss_sum: float = 0.0  # summed over ranks and micro-batches
    micro_batches: int = 0
    samples: int = 0  # on this rank
    metrics: dict[str, float] = field(default_factory=dict)  # of the last micro-batch
    output: object = None
    stop_reason: str = ""


class _MicroBatches:
    """One optimizer step = ``gradient_accumulation_steps`` good micro-batches through the DeepSpeed engine.

    A micro-batch whose loss is NaN/inf on any rank is dropped on every rank (no backward, DeepSpeed's
    accumulation counter does not move) and the next one takes its place; ``max_nonfinite_steps`` of them in a
    row abort. One all-reduce per micro-batch agrees on the loss, on non-finite losses and on preemption
    requests, so every rank takes the same branch."""

    def __init__(self, engine, step, batches, config: RunConfig, data_parallel_size: int) -> None:
        """``step``: the recipe's micro-batch step (inputs go where the engine's weights are, in their dtype:
        DeepSpeed casts only plain tensor inputs)."""
        self.engine, self.step, self.batches = engine, step, batches
        self.data_parallel_size = data_parallel_size
        self.tokens_per_sample = (config.model.img_size // config.model.patch_size) ** 2
        self.accumulation = config.train.gradient_accumulation_steps
        self.max_nonfinite = config.train.max_nonfinite_steps
        self.watch = PreemptionWatch()
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

    def optimizer_step(self, step: int) -> tuple[StepInfo, dict[str, float]]:
        """What the step did (samples and tokens over all data-parallel ranks) and its metrics."""
        tick = time.perf_counter()
        outcome = self._accumulate(step)
        mean_loss = outcome.loss_sum / (dist.get_world_size() * outcome.micro_batches)
        engine = self.engine
        metrics = outcome.metrics
        metrics.update(
            {
                "loss/total": mean_loss,
                "lr": engine.get_lr()[0],
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "loss_scale": _loss_scale(engine),
                "nonfinite_steps": self.nonfinite_total,
            }
        )
        samples = outcome.samples * self.data_parallel_size
        seconds = time.perf_counter() - tick
        info = StepInfo(step, seconds, samples, samples * self.tokens_per_sample, outcome.output, outcome.stop_reason)
        return info, metrics

    def _accumulate(self, step: int) -> _StepOutcome:
        outcome = _StepOutcome()
        while outcome.micro_batches < self.accumulation:
            batch = next(self.batches)
            loss, metrics, output = self.step.forward(self.engine, batch)
            finite = bool(torch.isfinite(loss.detach()))
            agreed = torch.tensor([float(loss.detach()) if finite else 0.0, float(not finite), *self.watch.flags()])
            dist.all_reduce(agreed)
            loss_sum, nonfinite_ranks, signalled, stop_file = agreed.tolist()
            if signalled or stop_file:
                outcome.stop_reason = PreemptionWatch.describe(signalled, stop_file)
            if nonfinite_ranks:
                self._count_nonfinite(step, int(nonfinite_ranks))
                continue
            self.nonfinite_in_a_row = 0
            self.engine.backward(loss)
            self.engine.step()
            outcome.loss_sum += loss_sum
            outcome.micro_batches += 1
            outcome.samples += self.step.samples(batch)
            outcome.metrics, outcome.output = metrics, output
        self.step.after_optimizer_step(self.engine, step)
        return outcome

    def _count_nonfinite(self, step: int, ranks: int) -> None:
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        log.warning("step %d: loss is NaN/inf on %d rank(s); micro-batch skipped", step, ranks)
        if self.nonfinite_in_a_row >= self.max_nonfinite:
            raise TrainingError(
                f"loss NaN/inf for {self.nonfinite_in_a_row} micro-batches in a row (at step {step}, "
                f"train.max_nonfinite_steps={self.max_nonfinite}); lower train.lr or check the data"
            )

    def close(self) -> None:
        self.watch.close()


def _loss_scale(engine) -> float:
    """The dynamic loss scale under fp16 (DeepSpeed keeps it on its optimizer wrapper); 1.0 otherwise."""
    optimizer = getattr(engine, "optimizer", None)
    for attribute in ("cur_scale", "loss_scale"):
        value = getattr(optimizer, attribute, None)
        if isinstance(value, (int, float, torch.Tensor)):
            return float(value)
    return 1.0

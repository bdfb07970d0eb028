"""The training loop: DeepSpeed engine over the parallelized model of the config's recipe
(``ringmoe.recipes.registry``), the recipe's micro-batch step, metrics, checkpoints, resume and preemption."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ringmoe.checkpoint.resume import (
    check_init_from,
    initial_model,
    load_engine_state,
    load_rank_states,
    read_resume_meta,
    resolve_resume,
)
from ringmoe.checkpoint.save import save_checkpoint
from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import TrainingError
from ringmoe.core.files import atomic_write_json
from ringmoe.data.loader import build_loader
from ringmoe.parallel.distributed import init_distributed
from ringmoe.parallel.engine import build_engine, check_precision_supported
from ringmoe.parallel.parallelize import parallelize
from ringmoe.parallel.topology import init_topology
from ringmoe.recipes.registry import build_pretraining_model, recipe_of, validate_run
from ringmoe.train import rng
from ringmoe.train.callbacks import (
    Accounting,
    Callback,
    RouterLoad,
    StepInfo,
    Throughput,
    callback_states,
    load_callback_states,
)
from ringmoe.train.metrics import MetricLogger
from ringmoe.train.preemption import PREEMPTED_MARKER, PreemptionWatch

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
    """``extra_callbacks``: built by a caller above this layer (the online probe, from ``ringmoe.eval``); they run
    after the metric callbacks, on every rank, whether or not ``train.callbacks`` is on."""
    validate_run(config)  # before any process group: config errors first

    check_precision_supported(config.train.precision)
    output_dir = Path(config.train.output_dir)
    checkpoints = output_dir / "checkpoints"
    resume_from = resolve_resume(config.train.resume, checkpoints)
    if config.train.init_from and resume_from is None:
        check_init_from(Path(config.train.init_from), config)
    recipe = recipe_of(config.model)
    prepared = recipe.prepare(config)
    rank, _ = init_distributed()
    topology = init_topology(config.parallel.tensor_parallel_size, config.parallel.expert_parallel_size)
    started = time.perf_counter()

    if config.train.init_from and resume_from is None:
        single_device = initial_model(Path(config.train.init_from))  # e.g. fine-tuning a pruned model
    else:
        single_device = build_pretraining_model(config.model, seed=config.train.seed)
    model = parallelize(single_device, topology, config.model.activation_checkpointing)
    recipe.after_parallelize(model)
    engine = build_engine(model, config, topology.data_parallel_size, topology.mpu)
    # Data (and masks) follow the data-parallel rank: the ranks of one TP group work on the same samples.
    data_rank, data_world = topology.data_rank, topology.data_parallel_size
    loader = build_loader(config.data, data_rank, data_world)
    mask_rng = torch.Generator().manual_seed(config.train.seed * 1_000_003 + data_rank)
    result = TrainResult()
    world = dist.get_world_size()
    callbacks: list[Callback] = []
    if config.train.callbacks:
        callbacks = [
            Throughput(recipe.flops_per_sample(config.model), world, config.train.peak_tflops_per_device),
            RouterLoad(replicas=config.parallel.tensor_parallel_size),
            Accounting(world, config.train.watts_per_device),
        ]
    callbacks += list(extra_callbacks)
    for callback in callbacks:
        callback.on_train_begin(engine.module)
    if resume_from is not None:
        meta = read_resume_meta(resume_from, config)
        load_callback_states(callbacks, meta.get("callbacks", {}))
        optimizer_states = meta.get("optimizer_states", True)
        if not optimizer_states and rank == 0:
            log.warning("%s was resharded: model weights only, the optimizer starts fresh Adam moments", resume_from)
        load_engine_state(engine, resume_from, optimizer_states)
        data_state, rng_state = load_rank_states(resume_from)
        loader.load_state_dict(data_state)
        rng.restore(rng_state, mask_rng)
        result.start_step = int(meta["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", resume_from, result.start_step)
    batches = iter(loader)

    def save(step: int) -> Path:
        def write_extra(directory: Path) -> None:
            for callback in callbacks:
                callback.on_save(directory)

        return save_checkpoint(
            engine, config, checkpoints, step, loader.state_dict(), rng.capture(mask_rng),
            extra_meta={"callbacks": callback_states(callbacks)}, write_extra=write_extra,
        )  # fmt: skip

    tokens_per_sample = (config.model.img_size // config.model.patch_size) ** 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision, torch.float32)
    recipe_step = recipe.build_step(config, prepared, mask_rng, engine.device, dtype, topology.data_parallel_group())
    micro = _MicroBatches(engine, recipe_step, batches, config)
    logger = MetricLogger(output_dir, config.train.steps, result.start_step, enabled=rank == 0)
    step = result.start_step
    try:
        while step < config.train.steps:
            step += 1
            tick = time.perf_counter()
            outcome = micro.optimizer_step(step)
            mean_loss = outcome.loss_sum / (dist.get_world_size() * outcome.micro_batches)
            result.losses.append(mean_loss)
            result.nonfinite_steps = micro.nonfinite_total
            metrics = outcome.metrics
            metrics.update(
                {
                    "loss/total": mean_loss,
                    "lr": engine.get_lr()[0],
                    "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                    "loss_scale": _loss_scale(engine),
                    "nonfinite_steps": micro.nonfinite_total,
                }
            )
            samples = outcome.samples * data_world
            info = StepInfo(step, time.perf_counter() - tick, samples, samples * tokens_per_sample, outcome.output)
            for callback in callbacks:
                callback.on_step(info, metrics)
            periodic = config.train.save_every and step % config.train.save_every == 0 and step != config.train.steps
            if outcome.stop_reason or periodic:
                save_tick = time.perf_counter()
                result.checkpoint = save(step)
                metrics["checkpoint/save_s"] = time.perf_counter() - save_tick
            metrics["elapsed_s"] = time.perf_counter() - started  # wall clock, for step-time analysis
            logger.log(step, metrics)
            if outcome.stop_reason:
                result.preempted = True
                if rank == 0:
                    atomic_write_json(output_dir / PREEMPTED_MARKER, {"step": step, "reason": outcome.stop_reason})
                    log.warning(
                        "preempted (%s): saved %s; exiting for a requeue", outcome.stop_reason, result.checkpoint
                    )
                break
        if not result.preempted:
            result.checkpoint = save(step) if step > result.start_step or resume_from is None else resume_from
            if rank == 0:
                (output_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
    finally:
        micro.close()
        logger.close()
    result.seconds = time.perf_counter() - started
    result.engine = engine
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

    def __init__(self, engine, step, batches, config: RunConfig) -> None:
        """``step``: the recipe's micro-batch step (inputs go where the engine's weights are, in their dtype:
        DeepSpeed casts only plain tensor inputs)."""
        self.engine, self.step, self.batches = engine, step, batches
        self.accumulation = config.train.gradient_accumulation_steps
        self.max_nonfinite = config.train.max_nonfinite_steps
        self.watch = PreemptionWatch()
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

    def optimizer_step(self, step: int) -> _StepOutcome:
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

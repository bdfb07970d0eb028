"""The training loop: DeepSpeed engine over the expert-parallel model, physics-informed SimMIM objective,
metrics, checkpoints, resume and preemption."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ringmoe.checkpoint.resume import load_engine_state, load_rank_states, read_resume_meta, resolve_resume
from ringmoe.checkpoint.save import save_checkpoint
from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import ConfigError, TrainingError
from ringmoe.core.files import atomic_write_json
from ringmoe.data.loader import build_loader
from ringmoe.models.build import build_model
from ringmoe.models.size import forward_flops_per_sample
from ringmoe.objectives.build import build_objective
from ringmoe.parallel.distributed import init_distributed
from ringmoe.parallel.engine import build_engine
from ringmoe.parallel.parallelize import parallelize
from ringmoe.parallel.topology import init_topology
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


def train(config: RunConfig) -> TrainResult:
    config.validate()
    objective = build_objective(config.objective, config.model)  # before any process group: config errors first
    masks = objective.masks
    output_dir = Path(config.train.output_dir)
    checkpoints = output_dir / "checkpoints"
    resume_from = resolve_resume(config.train.resume, checkpoints)
    rank, _ = init_distributed()
    topology = init_topology(config.parallel.tensor_parallel_size, config.parallel.expert_parallel_size)
    started = time.perf_counter()

    model = parallelize(
        build_model(config.model, seed=config.train.seed), topology, config.parallel.expert_parallel_size
    )
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
            Throughput(forward_flops_per_sample(config.model)["total"], world, config.train.peak_tflops_per_device),
            RouterLoad(replicas=config.parallel.tensor_parallel_size),
            Accounting(world, config.train.watts_per_device),
        ]
    if resume_from is not None:
        meta = read_resume_meta(resume_from, config)
        load_callback_states(callbacks, meta.get("callbacks", {}))
        load_engine_state(engine, resume_from)
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

    logger = MetricLogger(output_dir, config.train.steps, result.start_step, enabled=rank == 0)
    watch = PreemptionWatch()
    nonfinite_in_a_row = 0
    step = result.start_step
    try:
        while step < config.train.steps:
            step += 1
            tick = time.perf_counter()
            batch = next(batches)
            _check_tile_size(batch.images, config.model.img_size)
            step_masks = masks.for_batch(batch, mask_rng)
            reconstructions, output = engine(batch, step_masks)
            loss, metrics = objective(batch, reconstructions, output, step_masks)
            # One all-reduce agrees on the mean loss, whether any rank's loss is not finite, and whether any
            # rank was asked to stop, so every rank takes the same branch.
            finite = bool(torch.isfinite(loss.detach()))
            agreed = torch.tensor([float(loss.detach()) if finite else 0.0, float(not finite), *watch.flags()])
            dist.all_reduce(agreed)
            loss_sum, nonfinite_ranks, signalled_ranks, stop_file_ranks = agreed.tolist()
            if nonfinite_ranks:
                nonfinite_in_a_row += 1
                result.nonfinite_steps += 1
                log.warning("step %d: loss is NaN/inf on %d rank(s); step skipped", step, int(nonfinite_ranks))
                if nonfinite_in_a_row >= config.train.max_nonfinite_steps:
                    raise TrainingError(
                        f"loss NaN/inf for {nonfinite_in_a_row} steps in a row (up to step {step}, "
                        f"train.max_nonfinite_steps={config.train.max_nonfinite_steps}); "
                        "lower train.lr or check the data"
                    )
                mean_loss = float("nan")
            else:
                nonfinite_in_a_row = 0
                engine.backward(loss)
                engine.step()
                mean_loss = loss_sum / dist.get_world_size()
            result.losses.append(mean_loss)
            samples = sum(batch.sizes().values()) * data_world
            metrics.update(
                {
                    "loss/total": mean_loss,
                    "lr": engine.get_lr()[0],
                    "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                    "loss_scale": _loss_scale(engine),
                    "nonfinite_steps": result.nonfinite_steps,
                }
            )
            info = StepInfo(step, time.perf_counter() - tick, samples, samples * tokens_per_sample, output)
            for callback in callbacks:
                callback.on_step(info, metrics)
            preempt = bool(signalled_ranks or stop_file_ranks)
            periodic = config.train.save_every and step % config.train.save_every == 0 and step != config.train.steps
            if preempt or periodic:
                save_tick = time.perf_counter()
                result.checkpoint = save(step)
                metrics["checkpoint/save_s"] = time.perf_counter() - save_tick
            metrics["elapsed_s"] = time.perf_counter() - started  # wall clock, for step-time analysis
            logger.log(step, metrics)
            if preempt:
                result.preempted = True
                if rank == 0:
                    reason = PreemptionWatch.describe(signalled_ranks, stop_file_ranks)
                    atomic_write_json(output_dir / PREEMPTED_MARKER, {"step": step, "reason": reason})
                    log.warning("preempted (%s): saved %s; exiting for a requeue", reason, result.checkpoint)
                break
        if not result.preempted:
            result.checkpoint = save(step) if step > result.start_step or resume_from is None else resume_from
            if rank == 0:
                (output_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
    finally:
        watch.close()
        logger.close()
    result.seconds = time.perf_counter() - started
    return result


def _loss_scale(engine) -> float:
    """The dynamic loss scale under fp16 (DeepSpeed keeps it on its optimizer wrapper); 1.0 otherwise."""
    optimizer = getattr(engine, "optimizer", None)
    for attribute in ("cur_scale", "loss_scale"):
        value = getattr(optimizer, attribute, None)
        if isinstance(value, (int, float, torch.Tensor)):
            return float(value)
    return 1.0


def _check_tile_size(images: dict[str, torch.Tensor], img_size: int) -> None:
    for modality, tensor in images.items():
        if tuple(tensor.shape[-2:]) != (img_size, img_size):
            raise ConfigError(
                f"data: {modality} tiles are {tuple(tensor.shape[-2:])}, model.img_size is {img_size}; "
                "rebuild the shards with a matching tile_size or change model.img_size"
            )

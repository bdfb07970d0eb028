"""The training loop: DeepSpeed engine over the expert-parallel model, SimMIM objective, metrics, checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ringmoe.checkpoint.save import save_checkpoint
from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import ConfigError
from ringmoe.data.loader import build_loader
from ringmoe.models.build import build_model
from ringmoe.objectives.build import build_objective
from ringmoe.parallel.distributed import init_distributed
from ringmoe.parallel.engine import build_engine
from ringmoe.parallel.parallelize import parallelize
from ringmoe.parallel.topology import init_topology
from ringmoe.train.metrics import MetricLogger


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean over ranks, one per step
    checkpoint: Path | None = None
    seconds: float = 0.0


def _mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().float().clone()
    dist.all_reduce(value)
    return float(value) / dist.get_world_size()


def train(config: RunConfig) -> TrainResult:
    config.validate()
    objective = build_objective(config.objective, config.model)  # before any process group: config errors first
    masks = objective.masks
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
    batches = iter(loader)
    mask_rng = torch.Generator().manual_seed(config.train.seed * 1_000_003 + data_rank)

    output_dir = Path(config.train.output_dir)
    logger = MetricLogger(output_dir, config.train.steps, 0, enabled=rank == 0)
    result = TrainResult()
    for step in range(1, config.train.steps + 1):
        tick = time.perf_counter()
        batch = next(batches)
        _check_tile_size(batch.images, config.model.img_size)
        step_masks = masks.for_batch(batch, mask_rng)
        reconstructions, output = engine(batch, step_masks)
        loss, metrics = objective(batch, reconstructions, output, step_masks)
        engine.backward(loss)
        engine.step()
        mean_loss = _mean_over_ranks(loss)
        result.losses.append(mean_loss)
        samples = sum(batch.sizes().values()) * data_world
        metrics.update(
            {
                "loss/total": mean_loss,
                "lr": engine.get_lr()[0],
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "samples_per_s": samples / (time.perf_counter() - tick),
            }
        )
        logger.log(step, metrics)
        if config.train.save_every and step % config.train.save_every == 0 and step != config.train.steps:
            save_checkpoint(engine, config, output_dir / "checkpoints", step, loader.state_dict())
    checkpoints = output_dir / "checkpoints"
    result.checkpoint = save_checkpoint(engine, config, checkpoints, config.train.steps, loader.state_dict())
    logger.close()
    result.seconds = time.perf_counter() - started
    return result


def _check_tile_size(images: dict[str, torch.Tensor], img_size: int) -> None:
    for modality, tensor in images.items():
        if tuple(tensor.shape[-2:]) != (img_size, img_size):
            raise ConfigError(
                f"data: {modality} tiles are {tuple(tensor.shape[-2:])}, model.img_size is {img_size}; "
                "rebuild the shards with a matching tile_size or change model.img_size"
            )

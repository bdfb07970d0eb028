"""Find and load the checkpoint a run resumes from (``train.resume``: ``auto``, a checkpoint directory, or
empty for a fresh start)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ringmoe.checkpoint.save import (
    FORMAT_VERSION,
    META_NAME,
    TMP_SUFFIX,
    complete_checkpoints,
    data_state_name,
    read_meta,
    rng_state_name,
)
from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import CheckpointError


def resolve_resume(resume: str, root: Path) -> Path | None:
    """``auto``: the newest complete checkpoint under ``root`` (None when there is none yet, a fresh start).
    A path must be a complete checkpoint directory."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if path.name.endswith(TMP_SUFFIX) or not (path / META_NAME).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {META_NAME}; a save interrupted mid-write?)")
    return path


def read_resume_meta(tag_dir: Path, config: RunConfig) -> dict:
    """The meta of ``tag_dir``, checked against this run's layout (resharding is ``ringmoe consolidate``'s job)."""
    meta = read_meta(tag_dir)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{tag_dir / META_NAME}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    now = {
        "world_size": dist.get_world_size(),
        "expert_parallel_size": config.parallel.expert_parallel_size,
        "tensor_parallel_size": config.parallel.tensor_parallel_size,
    }
    differ = [f"{key} {meta.get(key)} -> {value}" for key, value in now.items() if meta.get(key) != value]
    if differ:
        raise CheckpointError(
            f"{tag_dir}: saved with another layout ({', '.join(differ)}); resume with the same layout, or "
            "consolidate and start a new run from the weights"
        )
    return meta


def load_rank_states(tag_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """This rank's data-loader state and RNG tensors."""
    rank = dist.get_rank()
    data_path, rng_path = tag_dir / data_state_name(rank), tag_dir / rng_state_name(rank)
    for path in (data_path, rng_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint was written by another number of ranks?")
    try:
        data_state = json.loads(data_path.read_text())
        rng_state = load_file(str(rng_path))
    except Exception as exc:  # truncated JSON or safetensors header
        raise CheckpointError(f"{tag_dir}: unreadable rank {rank} state ({type(exc).__name__}: {exc})") from None
    return data_state, rng_state


def load_engine_state(engine, tag_dir: Path, optimizer_states: bool = True) -> None:
    """Model, optimizer (with the loss scaler) and LR scheduler, through DeepSpeed. ``optimizer_states``: false
    for a resharded checkpoint, whose optimizer state belonged to the old layout (Adam moments start fresh)."""
    path, _ = engine.load_checkpoint(
        str(tag_dir.parent),
        tag=tag_dir.name,
        load_optimizer_states=optimizer_states,
        load_lr_scheduler_states=True,
    )
    if path is None:
        raise CheckpointError(f"{tag_dir}: DeepSpeed could not load the checkpoint")


def check_init_from(init_from: Path, config: RunConfig) -> None:
    """``train.init_from`` must hold this run's model, key by key (checked before any process group starts)."""
    from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME, read_model_config
    from ringmoe.core.errors import ConfigError
    from ringmoe.core.structured import to_dict

    saved, wanted = to_dict(read_model_config(init_from)), to_dict(config.model)
    differ = [
        f"{key}: {saved.get(key)} there, {value} here" for key, value in wanted.items() if saved.get(key) != value
    ]
    if differ:
        raise ConfigError(
            f"train.init_from {init_from}: its {MODEL_CONFIG_NAME} differs from model ({'; '.join(differ)}); "
            "use the config.yaml written beside it"
        )


def initial_model(init_from: Path) -> torch.nn.Module:
    """The single-device model with the weights of a consolidated (or pruned) directory, to start a run from
    (``check_init_from`` first: the trainer runs it before any process group starts)."""
    from ringmoe.checkpoint.consolidate import load_consolidated_model

    model, _ = load_consolidated_model(init_from)
    return model.float()  # the engine casts to bf16/fp16 itself; fp32 master weights start from these values

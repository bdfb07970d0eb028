"""Save a self-describing checkpoint directory, atomically.

Layout of ``<root>/global_step<N>/``: DeepSpeed's model/optimizer/scheduler files (per-expert files for MoE),
per rank ``data_state_rank*.json`` (loader position) and ``rng_state_rank*.safetensors`` (torch and mask RNG),
``config.yaml`` and ``ringmoe_meta.json`` (format version, step, world/EP/TP/ZeRO sizes, model config).

Everything is written into ``global_step<N>.tmp``; only when every rank has finished does rank 0 write the meta
file and rename the directory, so a ``global_step<N>`` directory is always complete and a save killed mid-write
leaves the previous checkpoint untouched. ``latest`` (a text file naming the tag) is rewritten atomically after
the rename, and the oldest complete checkpoints beyond ``keep_last`` are removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, atomic_write_text
from ringmoe.core.structured import to_dict, to_yaml

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
META_NAME = "ringmoe_meta.json"
LATEST_NAME = "latest"
TMP_SUFFIX = ".tmp"
TAG = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def data_state_name(rank: int) -> str:
    return f"data_state_rank{rank:05d}.json"


def rng_state_name(rank: int) -> str:
    return f"rng_state_rank{rank:05d}.safetensors"


def read_meta(tag_dir: Path) -> dict:
    """``ringmoe_meta.json`` of a checkpoint directory; missing (an incomplete save) or unreadable is an error."""
    path = tag_dir / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: no {META_NAME}; the checkpoint is incomplete or not a ringmoe checkpoint")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of every complete checkpoint under ``root``, oldest first."""
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = TAG.match(path.name)
            if match and path.is_dir() and (path / META_NAME).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    engine,
    config: RunConfig,
    root: Path,
    step: int,
    data_state: dict | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
    extra_meta: dict | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Collective: every rank calls it. ``data_state``: this rank's ``ShardLoader.state_dict()``;
    ``rng_state``: this rank's RNG tensors (``train.rng``); ``extra_meta``: run counters kept across restarts;
    ``write_extra(directory)``: more files for the checkpoint (router heatmaps), written before it is complete."""
    tag = tag_for(step)
    final, staging = root / tag, root / f"{tag}{TMP_SUFFIX}"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=staging.name, client_state={"ringmoe_step": step}, save_latest=False)
    if data_state is not None:
        atomic_write_json(staging / data_state_name(rank), data_state)
    if rng_state is not None:
        save_file({k: v.contiguous() for k, v in rng_state.items()}, str(staging / rng_state_name(rank)))
    if write_extra is not None:
        write_extra(staging)
    dist.barrier()
    if rank == 0:
        atomic_write_text(staging / "config.yaml", to_yaml(config))
        atomic_write_json(
            staging / META_NAME,
            {
                "format_version": FORMAT_VERSION,
                "step": step,
                "world_size": dist.get_world_size(),
                "expert_parallel_size": config.parallel.expert_parallel_size,
                "tensor_parallel_size": config.parallel.tensor_parallel_size,
                "zero_stage": config.parallel.zero_stage,
                "model": to_dict(config.model),
                **(extra_meta or {}),
            },
        )
        if final.exists():  # the same step saved again (e.g. on a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(staging, final)
        atomic_write_text(root / LATEST_NAME, tag + "\n")
        _rotate(root, config.train.keep_last)
    dist.barrier()
    return final


def _rotate(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for _, path in complete_checkpoints(root)[:-keep_last]:
        log.info("removing checkpoint %s (keep_last=%d)", path, keep_last)
        shutil.rmtree(path, ignore_errors=True)

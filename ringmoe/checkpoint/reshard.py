"""Reshard a DeepSpeed MoE checkpoint to another expert- or tensor-parallel size, so training resumes on another
cluster shape.

DeepSpeed stores each expert in a file of its own under its *global* index and loads the experts a rank owns
by that index, so the model files serve any EP size that divides the expert counts. What is tied to the old
layout is the optimizer state (ZeRO partitions and expert moments flattened per rank): it is left out, and the
resumed run starts fresh Adam moments (``optimizer_states: false`` in the meta), keeping its LR-schedule
position, data-loader positions and RNG. The world size stays the same, so every rank's loader state still
applies; the model files are hard-linked when possible (no copy of a 59 GB checkpoint).

A change of tensor-parallel size rewrites the model files: each tensor is put together from its TP slices and
cut again for the new size, by the rule of ``parallel.tp_layout`` that the TP swap itself follows.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ringmoe.checkpoint.consolidate import (
    EXPERT_FILE,
    MAIN_FILE_PATTERN,
    CheckpointSource,
    load_checkpoint_file,
    main_file,
    meta_model,
    read_checkpoint_layout,
)
from ringmoe.checkpoint.save import META_NAME, TMP_SUFFIX, data_state_name, read_meta, rng_state_name
from ringmoe.config.schema import load_config
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, atomic_write_text
from ringmoe.core.structured import to_yaml
from ringmoe.parallel.tp_layout import model_shards

log = logging.getLogger(__name__)
# Per-rank files that stay valid at the same world size.
_RANK_FILES = ("data_state_rank", "rng_state_rank", "router_load.")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def reshard(tag_dir: Path, out_dir: Path, expert_parallel_size: int, tensor_parallel_size: int | None = None) -> Path:
    """Write ``out_dir`` (a checkpoint directory, e.g. ``<run>/checkpoints/global_step<N>``) for
    ``expert_parallel_size`` and ``tensor_parallel_size`` (default: unchanged); resume from it with
    ``train.resume=<out_dir>`` and that layout. The data-parallel size stays, so every data rank's loader
    position and mask RNG carry over (the world size becomes data-parallel x tensor-parallel)."""
    meta = read_meta(tag_dir)
    source_tp = int(meta.get("tensor_parallel_size", 1))
    target_tp = source_tp if tensor_parallel_size is None else tensor_parallel_size
    layout = read_checkpoint_layout(tag_dir)  # every expert and TP-rank file present, shapes checked
    config = layout.model_config
    data_parallel = meta["world_size"] // source_tp
    for key in ("modal_experts", "collab_experts"):
        for stage, count in enumerate(getattr(config, key)):
            if count and count % expert_parallel_size:
                raise CheckpointError(
                    f"model.{key}[{stage}]={count} experts do not split over EP {expert_parallel_size}"
                )
    if data_parallel % expert_parallel_size:
        raise CheckpointError(
            f"EP {expert_parallel_size} does not divide the data-parallel size {data_parallel} of {tag_dir}"
        )
    if out_dir.exists():
        raise CheckpointError(f"{out_dir}: already exists")
    staging = out_dir.with_name(out_dir.name + TMP_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if target_tp == source_tp:
        for path in sorted(tag_dir.iterdir()):
            if MAIN_FILE_PATTERN.match(path.name) or EXPERT_FILE.match(path.name) or path.name.startswith(_RANK_FILES):
                _link_or_copy(path, staging / path.name)
    else:
        _write_tensor_parallel_files(layout, staging, target_tp)
        _copy_rank_states(tag_dir, staging, data_parallel, source_tp, target_tp)
    overrides = [f"parallel.expert_parallel_size={expert_parallel_size}", f"parallel.tensor_parallel_size={target_tp}"]
    atomic_write_text(staging / "config.yaml", to_yaml(load_config(tag_dir / "config.yaml", overrides)))
    atomic_write_json(
        staging / META_NAME,
        {
            **meta,
            "world_size": data_parallel * target_tp,
            "expert_parallel_size": expert_parallel_size,
            "tensor_parallel_size": target_tp,
            "optimizer_states": False,
            "resharded_from": {
                "checkpoint": str(tag_dir),
                "expert_parallel_size": meta["expert_parallel_size"],
                "tensor_parallel_size": source_tp,
            },
        },
    )
    os.replace(staging, out_dir)
    log.info("resharded %s (EP %d, TP %d) -> %s (EP %d, TP %d); optimizer states left out", tag_dir,
             meta["expert_parallel_size"], source_tp, out_dir, expert_parallel_size, target_tp)  # fmt: skip
    return out_dir


def _write_tensor_parallel_files(layout: CheckpointSource, staging: Path, tp: int) -> None:
    """DeepSpeed's files for ``tp`` ranks: each file group of the source (the non-expert states, then one group
    per expert) is put together in single-device form and written again as one slice per TP rank, with the
    same DeepSpeed keys. Memory: one group (the largest is the non-expert states)."""
    shards = [model_shards(meta_model(layout.model_config), tp, rank) for rank in range(tp)]
    tensors = layout.tensors()
    for index, (paths, names) in enumerate(layout.files):
        full = {key: next(tensors)[1] for key in names}  # tensors() yields in the same order as names
        for rank in range(tp):
            sliced = {}
            for key, tensor in full.items():
                shard = shards[rank].get(names[key])
                sliced[key] = tensor.index_select(shard.dim, shard.index).clone() if shard else tensor
            if index == 0:
                states = load_checkpoint_file(paths[0], mmap=True)
                extra = {k: v for k, v in states.items() if k not in ("module", "optimizer")}
                payload = {**extra, "module": sliced, "optimizer": None, "mp_world_size": tp}
                name = main_file(rank)
            else:
                payload = sliced
                match = EXPERT_FILE.match(paths[0].name)
                name = f"layer_{match.group(1)}_expert_{match.group(2)}_mp_rank_{rank:02d}_model_states.pt"
            torch.save(payload, staging / name)


def _copy_rank_states(tag_dir: Path, staging: Path, data_parallel: int, source_tp: int, target_tp: int) -> None:
    """Per target rank, the loader and RNG state of its data rank (ranks are laid out TP-fastest)."""
    for data_rank in range(data_parallel):
        source_rank = data_rank * source_tp
        for target_rank in range(data_rank * target_tp, (data_rank + 1) * target_tp):
            for name in (data_state_name, rng_state_name):
                source = tag_dir / name(source_rank)
                if source.is_file():
                    shutil.copy2(source, staging / name(target_rank))

"""Reshard a DeepSpeed MoE checkpoint to another expert-parallel size, so training resumes on another shape.

DeepSpeed stores each expert in a file of its own under its *global* index and loads the experts a rank owns
by that index, so the model files serve any EP size that divides the expert counts. What is tied to the old
layout is the optimizer state (ZeRO partitions and expert moments flattened per rank): it is left out, and the
resumed run starts fresh Adam moments (``optimizer_states: false`` in the meta), keeping its LR-schedule
position, data-loader positions and RNG. The world size stays the same, so every rank's loader state still
applies; the model files are hard-linked when possible (no copy of a 59 GB checkpoint).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ringmoe.checkpoint.consolidate import EXPERT_FILE, MAIN_FILE, read_checkpoint_layout, read_meta
from ringmoe.checkpoint.save import META_NAME, TMP_SUFFIX
from ringmoe.config.schema import load_config
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, atomic_write_text
from ringmoe.core.structured import to_yaml

log = logging.getLogger(__name__)
# Per-rank files that stay valid at the same world size.
_RANK_FILES = ("data_state_rank", "rng_state_rank", "router_load.")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def reshard(tag_dir: Path, out_dir: Path, expert_parallel_size: int) -> Path:
    """Write ``out_dir`` (a checkpoint directory, e.g. ``<run>/checkpoints/global_step<N>``) for
    ``expert_parallel_size``; resume from it with ``train.resume=<out_dir>`` and that EP size."""
    meta = read_meta(tag_dir)
    if meta.get("tensor_parallel_size", 1) != 1:
        raise CheckpointError(f"{tag_dir}: resharding tensor-parallel checkpoints is not supported yet")
    layout = read_checkpoint_layout(tag_dir)  # every expert file present, shapes checked
    config = layout.model_config
    data_parallel = meta["world_size"] // meta.get("tensor_parallel_size", 1)
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
    for path in sorted(tag_dir.iterdir()):
        if path.name == MAIN_FILE or EXPERT_FILE.match(path.name) or path.name.startswith(_RANK_FILES):
            _link_or_copy(path, staging / path.name)
    run_config = load_config(tag_dir / "config.yaml", [f"parallel.expert_parallel_size={expert_parallel_size}"])
    atomic_write_text(staging / "config.yaml", to_yaml(run_config))
    atomic_write_json(
        staging / META_NAME,
        {
            **meta,
            "expert_parallel_size": expert_parallel_size,
            "optimizer_states": False,
            "resharded_from": {"checkpoint": str(tag_dir), "expert_parallel_size": meta["expert_parallel_size"]},
        },
    )
    os.replace(staging, out_dir)
    log.info("resharded %s (EP %d) -> %s (EP %d); optimizer states left out", tag_dir,
             meta["expert_parallel_size"], out_dir, expert_parallel_size)  # fmt: skip
    return out_dir

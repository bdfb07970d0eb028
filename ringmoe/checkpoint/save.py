"""Save a self-describing checkpoint directory: DeepSpeed model/optimizer files plus ``ringmoe_meta.json``.

The meta file is written last, after every rank has finished its DeepSpeed files, so its presence marks a
complete checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from ringmoe.config.schema import RunConfig
from ringmoe.core.files import atomic_write_json, atomic_write_text
from ringmoe.core.structured import to_dict, to_yaml

FORMAT_VERSION = 1
META_NAME = "ringmoe_meta.json"


def tag_for(step: int) -> str:
    return f"global_step{step}"


def data_state_name(rank: int) -> str:
    return f"data_state_rank{rank:05d}.json"


def save_checkpoint(engine, config: RunConfig, root: Path, step: int, data_state: dict | None = None) -> Path:
    """``data_state``: this rank's ``ShardLoader.state_dict()``, kept as JSON so a resumed run continues the
    exact sample sequence."""
    tag = tag_for(step)
    engine.save_checkpoint(str(root), tag=tag, client_state={"ringmoe_step": step})
    directory = root / tag
    if data_state is not None:
        atomic_write_json(directory / data_state_name(dist.get_rank()), data_state)
    dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_text(directory / "config.yaml", to_yaml(config))
        atomic_write_json(
            directory / META_NAME,
            {
                "format_version": FORMAT_VERSION,
                "step": step,
                "world_size": dist.get_world_size(),
                "expert_parallel_size": config.parallel.expert_parallel_size,
                "tensor_parallel_size": config.parallel.tensor_parallel_size,
                "zero_stage": config.parallel.zero_stage,
                "model": to_dict(config.model),
            },
        )
    dist.barrier()
    return directory

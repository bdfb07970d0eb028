"""Process-group set-up for runs launched by torchrun, the deepspeed launcher or srun."""

from __future__ import annotations

import datetime
import os

import torch.distributed as dist


def init_distributed(timeout_s: int = 600) -> tuple[int, int]:
    """Initialise deepspeed.comm (it picks gloo on CPU, nccl on GPU) and return (rank, world_size).

    A single process without launcher variables still gets a one-rank group, so the same code path runs.
    """
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    if not dist.is_initialized():
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s), verbose=False)
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

"""Work-arounds for DeepSpeed paths that break on the gloo backend (CPU runs and tests); NCCL is untouched."""

from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.moe import mappings
from deepspeed.utils.bwc import bwc_tensor_model_parallel_group, bwc_tensor_model_parallel_world_size


def _gather_tokens_with_all_gather(input_: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Same result as DeepSpeed's ``_gather_tokens``, built from ``all_gather`` of equal-shaped tensors."""
    mpu = mappings.deepspeed.utils.groups.mpu
    input_ = input_.contiguous()
    world = bwc_tensor_model_parallel_world_size(mpu)
    if world == 1:
        return input_
    pieces = [torch.empty_like(input_) for _ in range(world)]
    dist.all_gather(pieces, input_, group=bwc_tensor_model_parallel_group(mpu))
    return torch.cat(pieces, dim=dim)


def patch_moe_token_gather_for_gloo() -> None:
    """Under TP, DeepSpeed's MoE gathers each TP rank's share of the capacity slots with
    ``all_gather_into_tensor`` into a flat buffer; gloo rejects a flat output for a shaped input
    ("invalid tensor size"). Route that gather through ``all_gather`` when the backend is gloo."""
    if dist.get_backend() == "gloo":
        mappings._gather_tokens = _gather_tokens_with_all_gather

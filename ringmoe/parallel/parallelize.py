"""Apply every parallelism to the single-device model, from outside (torchtitan's ``parallelize_*`` shape)."""

from __future__ import annotations

from torch import nn

from ringmoe.parallel.checkpointing import apply_activation_checkpointing
from ringmoe.parallel.expert_parallel import apply_expert_parallel
from ringmoe.parallel.topology import Topology


def parallelize(model: nn.Module, topology: Topology, activation_checkpointing: bool = False) -> nn.Module:
    """Experts first (DeepSpeed builds its MoE from plain experts), then tensor parallel over all of them (the
    degrees are the topology's), then activation checkpointing around the resulting blocks."""
    model = apply_expert_parallel(model, topology.expert_parallel_size, topology.mpu)
    if topology.tensor_parallel_size > 1:
        from ringmoe.parallel.tensor_parallel import apply_tensor_parallel

        model = apply_tensor_parallel(model)
    if activation_checkpointing:
        model = apply_activation_checkpointing(model)
    return model

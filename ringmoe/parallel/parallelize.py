"""Apply every parallelism to the single-device model, from outside (torchtitan's ``parallelize_*`` shape)."""

from __future__ import annotations

from torch import nn

from ringmoe.parallel.expert_parallel import apply_expert_parallel
from ringmoe.parallel.topology import Topology


def parallelize(model: nn.Module, topology: Topology) -> nn.Module:
    """Experts first (DeepSpeed builds its MoE from plain experts), then tensor parallel over all of them; the
    degrees are the topology's."""
    model = apply_expert_parallel(model, topology.expert_parallel_size, topology.mpu)
    if topology.tensor_parallel_size > 1:
        from ringmoe.parallel.tensor_parallel import apply_tensor_parallel

        model = apply_tensor_parallel(model)
    return model

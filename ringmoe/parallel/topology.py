"""The TP/DP/EP process topology: megatron-core ``parallel_state`` builds the tensor- and data-parallel groups,
DeepSpeed builds the expert groups on top of them (through ``mpu``), so the two libraries agree on who is who.

Ranks are laid out TP-fastest (Megatron's order): with world 8, tp 2, ep 2 the TP groups are [0,1] [2,3] ...,
the DP groups [0,2,4,6] [1,3,5,7], and an expert group holds ranks of equal TP rank, e.g. [0,2].
At TP 1 megatron-core is not even imported (it costs seconds and warns about missing Transformer Engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from ringmoe.core.errors import ConfigError


@dataclass(frozen=True)
class Topology:
    """Where this rank sits. The data loader splits by ``data_rank``: TP peers must see the same batch."""

    tensor_parallel_size: int
    tensor_rank: int
    data_parallel_size: int
    data_rank: int
    expert_parallel_size: int = 1  # experts of a layer spread over this many data-parallel peers
    mpu: Any = None  # megatron_mpu.MegatronMPU when tp > 1; None lets DeepSpeed build plain expert/data groups

    def data_parallel_group(self):
        """The process group of this rank's data-parallel peers (ranks that see different samples)."""
        return self.mpu.get_data_parallel_group() if self.mpu is not None else dist.group.WORLD


def check_layout(world_size: int, tensor_parallel: int, expert_parallel: int) -> None:
    if tensor_parallel < 1 or world_size % tensor_parallel:
        raise ConfigError(
            f"parallel.tensor_parallel_size={tensor_parallel} does not divide the world size {world_size}"
        )
    data_parallel = world_size // tensor_parallel
    if expert_parallel < 1 or data_parallel % expert_parallel:
        raise ConfigError(
            f"parallel.expert_parallel_size={expert_parallel} does not divide the data-parallel size {data_parallel} "
            f"(world {world_size} / tensor parallel {tensor_parallel}); expert groups are carved out of it"
        )


def init_topology(tensor_parallel: int, expert_parallel: int) -> Topology:
    """Build the groups on an initialised process group."""
    world, rank = dist.get_world_size(), dist.get_rank()
    check_layout(world, tensor_parallel, expert_parallel)
    if tensor_parallel == 1:
        return Topology(1, 0, world, rank, expert_parallel)
    from ringmoe.parallel import megatron_mpu

    mpu = megatron_mpu.initialize(tensor_parallel)
    return Topology(
        tensor_parallel_size=tensor_parallel,
        tensor_rank=mpu.get_tensor_model_parallel_rank(),
        data_parallel_size=mpu.get_data_parallel_world_size(),
        data_rank=mpu.get_data_parallel_rank(),
        expert_parallel_size=expert_parallel,
        mpu=mpu,
    )


def destroy_topology(topology: Topology) -> None:
    if topology.mpu is not None:
        from ringmoe.parallel import megatron_mpu

        megatron_mpu.destroy()

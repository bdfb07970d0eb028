"""megatron-core's ``parallel_state`` seen through the ``mpu`` interface DeepSpeed queries."""

from __future__ import annotations

import torch.distributed as dist
from megatron.core import parallel_state


class MegatronMPU:
    """DeepSpeed still calls the older Megatron names (``get_model_parallel_rank`` ...), which megatron-core
    renamed; without pipeline parallelism the model-parallel group is the tensor-parallel group."""

    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(parallel_state.get_tensor_model_parallel_src_rank)
    get_pipeline_model_parallel_rank = staticmethod(parallel_state.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(parallel_state.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(parallel_state.get_pipeline_model_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)
    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)

    @staticmethod
    def get_data_parallel_group_ranks() -> list[int]:
        return dist.get_process_group_ranks(parallel_state.get_data_parallel_group())


def initialize(tensor_parallel: int) -> MegatronMPU:
    if not parallel_state.model_parallel_is_initialized():
        # Gloo side groups serve only Megatron's distributed optimizer, which DeepSpeed replaces.
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_parallel, create_gloo_process_groups=False
        )
    return MegatronMPU()


def destroy() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()

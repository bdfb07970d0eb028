"""Tensor parallelism with megatron-core layers, swapped into the single-device model from outside.

Attention (Megatron's split): ``qkv`` becomes a ``ColumnParallelLinear`` holding this rank's heads (q, k and v of
the same heads), ``proj`` a ``RowParallelLinear`` whose all-reduce rebuilds the full output; the per-head
temperature and the last layer of the position-bias MLP keep the same heads. Experts: ``fc1`` column-parallel,
``fc2`` row-parallel, for the shared expert and every routed expert (inside DeepSpeed's MoE too).

Each rank copies its slice of the single-device weights, so a model built with the same seed computes the same
function at any TP size. Everything outside these layers is replicated and sees identical gradients, because
the column-parallel layers all-reduce the input gradient in backward.

megatron-core is used with ``use_cpu_initialization`` (weights are overwritten by the copy anyway), so the same
layers run on CPU/gloo and on CUDA/NCCL; nothing here needs a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

from ringmoe.models.moe import FeedForward
from ringmoe.models.swin import WindowAttention
from ringmoe.parallel.tp_layout import attention_shards, feed_forward_shards

# Where a sharded tensor sits in its single-device original: (dim, indices along dim, full size along dim).
_SHARD_ATTR = "ringmoe_tp_shard"

# DeepSpeed tags expert parameters with these (reduced over the expert-data-parallel group, saved per expert);
# a swapped layer inside an expert must carry them on.
_DEEPSPEED_PARAM_TAGS = ("allreduce", "group_name")


class _AsLinear:
    """Makes a megatron layer behave like ``nn.Linear``: return one tensor and accept any leading shape
    (megatron's backward folds exactly three dimensions, [sequence, batch, hidden])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        output, _ = super().forward(x.reshape(1, -1, x.shape[-1]))
        return output.reshape(*leading, output.shape[-1])

    # megatron's layers add an ``_extra_state: None`` entry (for Transformer Engine) to the state dict, which
    # DeepSpeed's expert checkpointing cannot save; plain nn.Module behaviour leaves it out.
    get_extra_state = nn.Module.get_extra_state
    set_extra_state = nn.Module.set_extra_state

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # ... and megatron's load pre-hook would put that entry back on load, where it is then unexpected: a
        # TP checkpoint could not be resumed.
        self._load_state_dict_pre_hooks.clear()


class ColumnParallel(_AsLinear, ColumnParallelLinear):
    pass


class RowParallel(_AsLinear, RowParallelLinear):
    pass


def _no_init(_: torch.Tensor) -> None:
    """Weights are copied from the single-device model right after construction."""


def _megatron_config() -> ModelParallelConfig:
    return ModelParallelConfig(
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        use_cpu_initialization=True,
        perform_initialization=False,
    )


def column_parallel(linear: nn.Linear, rows: torch.Tensor) -> ColumnParallel:
    """``rows``: indices of the output features this rank keeps."""
    layer = ColumnParallel(
        linear.in_features,
        linear.out_features,
        config=_megatron_config(),
        init_method=_no_init,
        bias=linear.bias is not None,
        gather_output=False,
    )
    with torch.no_grad():
        layer.weight.copy_(linear.weight[rows])
        _mark_shard(layer.weight, 0, rows, linear.out_features)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias[rows])
            _mark_shard(layer.bias, 0, rows, linear.out_features)
    _carry_tags(linear, layer)
    return layer


def row_parallel(linear: nn.Linear, columns: torch.Tensor) -> RowParallel:
    """``columns``: indices of the input features this rank holds (the column-parallel output before it)."""
    layer = RowParallel(
        linear.in_features,
        linear.out_features,
        config=_megatron_config(),
        init_method=_no_init,
        bias=linear.bias is not None,
        input_is_parallel=True,
        skip_bias_add=False,
    )
    with torch.no_grad():
        layer.weight.copy_(linear.weight[:, columns])
        _mark_shard(layer.weight, 1, columns, linear.in_features)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
    _carry_tags(linear, layer)
    return layer


def _mark_shard(param: torch.Tensor, dim: int, index: torch.Tensor, full_size: int) -> None:
    # megatron sets the TP attributes of a weight only when it initialises it (we skip that, then copy); DeepSpeed
    # reads them to count each shard once in the gradient norm, replicated tensors on TP rank 0 only.
    if not getattr(param, "tensor_model_parallel", False):
        set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1)
    setattr(param, _SHARD_ATTR, (dim, index, full_size))


def _carry_tags(old: nn.Module, new: nn.Module) -> None:
    source = next(old.parameters())
    for param in new.parameters():
        for tag in _DEEPSPEED_PARAM_TAGS:
            if hasattr(source, tag):
                setattr(param, tag, getattr(source, tag))


def parallelize_attention(attn: WindowAttention, tp: int, rank: int, name: str) -> None:
    shards = attention_shards(attn, tp, rank, name)
    local_heads = shards["logit_scale"].index
    attn.qkv = column_parallel(attn.qkv, shards["qkv.weight"].index)
    attn.proj = row_parallel(attn.proj, shards["proj.weight"].index)
    attn.cpb_mlp[2] = column_parallel(attn.cpb_mlp[2], shards["cpb_mlp.2.weight"].index)
    attn.logit_scale = nn.Parameter(attn.logit_scale.detach()[local_heads].clone())
    _mark_shard(attn.logit_scale, 0, local_heads, shards["logit_scale"].full_size)
    attn.num_heads = len(local_heads)


def parallelize_feed_forward(ffn: FeedForward, tp: int, rank: int, name: str) -> None:
    hidden = feed_forward_shards(ffn, tp, rank, name)["fc1.weight"].index
    ffn.fc1 = column_parallel(ffn.fc1, hidden)
    ffn.fc2 = row_parallel(ffn.fc2, hidden)


def apply_tensor_parallel(model: nn.Module) -> nn.Module:
    """Swap, in place, attention and expert linears for megatron-core's parallel ones, as laid out by
    ``topology.init_topology`` (which leaves megatron-core uninitialised at TP 1: nothing to swap)."""
    if not parallel_state.model_parallel_is_initialized():
        return model
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if tp == 1:
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, WindowAttention):
            parallelize_attention(module, tp, rank, name)
        elif isinstance(module, FeedForward):
            parallelize_feed_forward(module, tp, rank, name)
    return model


def gather_full(param: torch.Tensor, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """The single-device value of ``tensor`` (default: ``param`` itself; pass ``param.grad`` for its gradient),
    reassembled from every TP rank's shard. Replicated tensors are returned as they are. Collective over the
    TP group: every rank must call it for the same parameters in the same order."""
    tensor = param.detach() if tensor is None else tensor.detach()
    shard = getattr(param, _SHARD_ATTR, None)
    if shard is None:
        return tensor
    dim, index, full_size = shard
    group = parallel_state.get_tensor_model_parallel_group()
    world = dist.get_world_size(group)
    pieces = [torch.empty_like(tensor) for _ in range(world)]
    indices = [torch.empty_like(index) for _ in range(world)]
    dist.all_gather(pieces, tensor.contiguous(), group=group)
    dist.all_gather(indices, index, group=group)
    shape = list(tensor.shape)
    shape[dim] = full_size
    full = tensor.new_empty(shape)
    for piece, where in zip(pieces, indices):
        full.index_copy_(dim, where, piece)
    return full


def full_named_parameters(model: nn.Module, grads: bool = False) -> Iterator[tuple[str, torch.Tensor | None]]:
    """``named_parameters`` in single-device layout (values, or gradients with ``grads=True``)."""
    for name, param in model.named_parameters():
        if grads and param.grad is None:
            yield name, None
        else:
            yield name, gather_full(param, param.grad if grads else None)

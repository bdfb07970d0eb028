"""Which slice of each single-device tensor a tensor-parallel rank holds: the one rule that both the TP swap
(``tensor_parallel``) and checkpoint consolidation follow. Free of megatron/deepspeed imports, so offline tools
can reassemble TP checkpoints.

Attention (Megatron's split by heads): ``qkv`` rows of this rank's heads (q, k and v of the same heads, the
output being laid out ``(3, heads, head_dim)``), ``proj`` the matching input columns, the position-bias MLP's
last layer and ``logit_scale`` the same heads. Every FFN (shared expert and each routed expert): ``fc1`` rows
and ``fc2`` columns of an equal share of the hidden units. Everything else is replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ringmoe.core.errors import ConfigError
from ringmoe.models.moe import FeedForward
from ringmoe.models.swin import WindowAttention


@dataclass(frozen=True)
class Shard:
    dim: int
    index: torch.Tensor  # positions along ``dim`` of the single-device tensor, in this rank's order
    full_size: int


def shard_indices(size: int, tp: int, rank: int, what: str) -> torch.Tensor:
    if size % tp:
        raise ConfigError(f"{what} ({size}) is not divisible by parallel.tensor_parallel_size={tp}")
    per_rank = size // tp
    return torch.arange(rank * per_rank, (rank + 1) * per_rank)


def attention_shards(attn: WindowAttention, tp: int, rank: int, name: str) -> dict[str, Shard]:
    """Relative tensor name -> shard, for one attention module (its single-device form)."""
    heads = attn.num_heads
    local_heads = shard_indices(heads, tp, rank, f"{name}: attention heads")
    head_dim = attn.qkv.out_features // (3 * heads)
    qkv_rows = torch.arange(attn.qkv.out_features).view(3, heads, head_dim)[:, local_heads].reshape(-1)
    proj_columns = torch.arange(heads * head_dim).view(heads, head_dim)[local_heads].reshape(-1)
    shards = {
        "qkv.weight": Shard(0, qkv_rows, attn.qkv.out_features),
        "proj.weight": Shard(1, proj_columns, heads * head_dim),
        "cpb_mlp.2.weight": Shard(0, local_heads, heads),
        "logit_scale": Shard(0, local_heads, heads),
    }
    if attn.qkv.bias is not None:
        shards["qkv.bias"] = Shard(0, qkv_rows, attn.qkv.out_features)
    return shards


def feed_forward_shards(ffn: FeedForward, tp: int, rank: int, name: str) -> dict[str, Shard]:
    hidden_size = ffn.fc1.out_features
    hidden = shard_indices(hidden_size, tp, rank, f"{name}: expert hidden width")
    shards = {"fc1.weight": Shard(0, hidden, hidden_size), "fc2.weight": Shard(1, hidden, hidden_size)}
    if ffn.fc1.bias is not None:
        shards["fc1.bias"] = Shard(0, hidden, hidden_size)
    return shards


def model_shards(model: nn.Module, tp: int, rank: int) -> dict[str, Shard]:
    """Full tensor name -> shard for every tensor-parallel tensor of a single-device model (built on the meta
    device is enough: only shapes are read)."""
    shards: dict[str, Shard] = {}
    for name, module in model.named_modules():
        if isinstance(module, WindowAttention):
            found = attention_shards(module, tp, rank, name)
        elif isinstance(module, FeedForward):
            found = feed_forward_shards(module, tp, rank, name)
        else:
            continue
        shards.update({f"{name}.{key}": shard for key, shard in found.items()})
    return shards

"""Memory per rank for a parallel layout: parameters, gradients, optimizer states and an activation estimate.

Model states follow DeepSpeed mixed precision with Adam (ZeRO paper accounting): 2 bytes of bf16 parameters,
2 bytes of bf16 gradients and 12 bytes of fp32 optimizer state (master weights, momentum, variance) per
parameter. Routed-expert parameters are split over the expert-parallel group, the rest replicated; attention
and every expert (the shared one too) are split over tensor parallel, norms, routers and embeddings are not.
ZeRO stage 1 shards optimizer states over the data-parallel replicas of each parameter, stage 2 also gradients
(DeepSpeed MoE stops at stage 2). Activations are an estimate in bf16 per token and block (attention: qkv,
scores, output; each active expert: input, hidden before and after GELU), with only block inputs kept when
activation checkpointing is on, plus one block being recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ringmoe.core.errors import ConfigError
from ringmoe.models.size import ParameterReport

GIB = 2**30
EXPERT_COMPONENTS = ("modal_experts", "collab_experts")
# What ``ringmoe.parallel.tensor_parallel`` shards over TP (the rest is replicated on every TP rank).
TENSOR_PARALLEL_COMPONENTS = ("attention", "modal_experts", "collab_experts", "shared_expert")


@dataclass
class Layout:
    gpus: int
    tensor_parallel: int = 1
    expert_parallel: int = 1
    zero_stage: int = 1
    micro_batch: int = 8  # samples per GPU per step
    activation_checkpointing: bool = True

    @property
    def data_parallel(self) -> int:
        return self.gpus // self.tensor_parallel

    def check(self, config=None) -> None:
        if self.gpus % self.tensor_parallel or self.data_parallel % self.expert_parallel:
            raise ConfigError(f"{self}: tp must divide the GPUs and ep the data-parallel size")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"zero_stage {self.zero_stage}: DeepSpeed MoE supports ZeRO stage 0, 1 or 2")
        if config is not None:
            tp = self.tensor_parallel
            if any(h % tp for h in config.num_heads):
                raise ConfigError(f"tp {tp} does not divide the attention heads {config.num_heads}")
            experts = [e for e in (config.modal_experts + config.collab_experts) if e]
            if experts and any(e % self.expert_parallel for e in experts):
                # DeepSpeed places whole experts: each rank of an expert group holds experts/ep of every router.
                raise ConfigError(f"ep {self.expert_parallel} does not divide the experts per router {experts}")


def memory_per_rank(report: ParameterReport, config, layout: Layout) -> dict[str, float]:
    """Bytes per rank by kind (``params``, ``grads``, ``optimizer``, ``activations``, ``total``)."""
    layout.check(config)
    tp, ep, dp = layout.tensor_parallel, layout.expert_parallel, layout.data_parallel
    experts = sum(report.by_component.get(c, 0) for c in EXPERT_COMPONENTS)
    dense_split = sum(report.by_component.get(c, 0) for c in TENSOR_PARALLEL_COMPONENTS if c not in EXPERT_COMPONENTS)
    dense_replicated = report.total - experts - dense_split
    # Replicas of each parameter over which ZeRO may shard its states.
    expert_replicas, dense_replicas = dp // ep, dp
    expert_local, dense_local = experts / (ep * tp), dense_split / tp + dense_replicated

    def sharded(count: float, replicas: int, stage_needed: int, bytes_per: int) -> float:
        return count * bytes_per / (replicas if layout.zero_stage >= stage_needed else 1)

    params = sharded(expert_local, expert_replicas, 3, 2) + sharded(dense_local, dense_replicas, 3, 2)
    grads = sharded(expert_local, expert_replicas, 2, 2) + sharded(dense_local, dense_replicas, 2, 2)
    optimizer = sharded(expert_local, expert_replicas, 1, 12) + sharded(dense_local, dense_replicas, 1, 12)
    activations = _activation_bytes(config, layout)
    total = params + grads + optimizer + activations
    return {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations, "total": total}


def _activation_bytes(config, layout: Layout) -> float:
    side = config.img_size // config.patch_size
    dim = config.embed_dim
    stored, largest_block = 0.0, 0.0
    for stage, depth in enumerate(config.depths):
        if stage > 0:
            side //= 2
            dim *= 2
        tokens = layout.micro_batch * side**2
        window = min(config.window_size, side)
        heads = config.num_heads[stage] / layout.tensor_parallel
        hidden = config.mlp_ratio * dim / layout.tensor_parallel
        attention = 2 * tokens * (6 * dim + 2 * heads * window**2)  # qkv, out, proj in, norms; scores + softmax
        ffn = (
            2 * tokens * config.expert_ffns_per_token(stage) * (dim + 2 * hidden)
        )  # expert input; hidden before and after GELU
        block = attention + ffn
        largest_block = max(largest_block, block)
        stored += depth * (2 * tokens * dim if layout.activation_checkpointing else block)
    return stored + (largest_block if layout.activation_checkpointing else 0.0)


def memory_table(report, config, layouts: Sequence[Layout]) -> list[str]:
    """`ringmoe model-info --memory` lines: per-rank memory of each layout."""
    lines = [
        "  memory per rank (GiB; bf16 weights and grads, fp32 Adam states, activations estimated)",
        f"  {'gpus':>6}{'tp':>4}{'ep':>4}{'dp':>5}{'zero':>5}{'mb':>4}{'ckpt':>5}"
        f"{'params':>9}{'grads':>8}{'optim':>8}{'activ':>8}{'total':>8}",
    ]
    for layout in layouts:
        mem = {k: v / GIB for k, v in memory_per_rank(report, config, layout).items()}
        checkpointing = "yes" if layout.activation_checkpointing else "no"
        lines.append(
            f"  {layout.gpus:>6}{layout.tensor_parallel:>4}{layout.expert_parallel:>4}{layout.data_parallel:>5}"
            f"{layout.zero_stage:>5}{layout.micro_batch:>4}{checkpointing:>5}{mem['params']:>9.1f}"
            f"{mem['grads']:>8.1f}{mem['optimizer']:>8.1f}{mem['activations']:>8.1f}{mem['total']:>8.1f}"
        )
    return lines

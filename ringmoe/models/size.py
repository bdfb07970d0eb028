"""Model size accounting: parameters by component, active parameters per token, forward FLOPs per sample.

Parameters are counted on a built model (build it on the ``meta`` device for the 14.7B config: no memory is
allocated), so the count is of the code that trains, not of a formula beside it. FLOPs are analytic from the
config (2 FLOPs per multiply-add), covering every matmul of the forward pass; a training step costs about 3x.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

COMPONENTS = (
    "patch_embed",
    "attention",
    "norms",
    "patch_merging",
    "routers",
    "modal_experts",
    "collab_experts",
    "shared_expert",
    "decoders",
    "other",
)


@dataclass
class ParameterReport:
    total: int = 0  # every parameter, decoders included
    encoder: int = 0
    by_component: Counter = field(default_factory=Counter)
    # Encoder parameters one token of each modality passes through: its patch embedding, every non-expert
    # weight, its modality's router and one expert per top-1 router, plus the shared expert.
    active_per_token: dict[str, int] = field(default_factory=dict)


def component_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] in ("decoders", "projector") or "decoder" in parts[0]:  # pretraining heads
        return "decoders"
    if "patch_embed" in parts:
        return "patch_embed"
    if "attn" in parts:
        return "attention"
    if "downsample" in parts:
        return "patch_merging"
    if "ffn" in parts:
        if "gate" in parts:
            return "routers"
        if "shared" in parts:
            return "shared_expert"
        return "modal_experts" if "modal" in parts else "collab_experts"
    if any(p.startswith("norm") for p in parts):
        return "norms"
    return "other"


def _active_for(name: str, modality: str) -> bool:
    """Does a token of ``modality`` use this parameter? Top-1 routers: one expert each (all the same size)."""
    parts = name.split(".")
    if "patch_embed" in parts:
        return parts[parts.index("patch_embed") + 1] == modality
    if "modal" in parts and parts[parts.index("modal") + 1] != modality:
        return False
    if "experts" in parts:
        return parts[parts.index("experts") + 1] == "0"
    return True


def parameter_report(model: nn.Module, modalities: list[str]) -> ParameterReport:
    """Count ``model``'s parameters (a ``RingMoESimMIM`` or its ``encoder``; works on the meta device)."""
    report = ParameterReport(active_per_token={m: 0 for m in modalities})
    for name, param in model.named_parameters():
        count = param.numel()
        name = name.removeprefix("encoder.")
        component = component_of(name)
        report.total += count
        report.by_component[component] += count
        if component == "decoders":
            continue
        report.encoder += count
        for modality in modalities:
            if _active_for(name, modality):
                report.active_per_token[modality] += count
    return report


def forward_flops_per_sample(config) -> dict[str, float]:
    """Forward FLOPs of one image through the encoder (``ModelConfig``), by part."""
    tokens_side = config.img_size // config.patch_size
    dim = config.embed_dim
    hidden_ratio = config.mlp_ratio
    channels = max(config.in_chans.values())
    flops: Counter = Counter()
    flops["patch_embed"] = 2 * tokens_side**2 * channels * config.patch_size**2 * dim
    for stage, depth in enumerate(config.depths):
        if stage > 0:
            tokens_side //= 2
            flops["patch_merging"] += 2 * tokens_side**2 * (4 * dim) * (2 * dim)
            dim *= 2
        tokens = tokens_side**2
        window = min(config.window_size, tokens_side)
        hidden = int(dim * hidden_ratio)
        experts_per_token = config.expert_ffns_per_token(stage)  # one modal + one collaborative (top-1) + shared
        routers = config.modal_experts[stage] + config.collab_experts[stage]
        for _ in range(depth):
            flops["attention_linear"] += 2 * tokens * dim * 4 * dim  # qkv (3d^2) and output projection (d^2)
            flops["attention_scores"] += 2 * 2 * tokens * window**2 * dim  # q k^T and attn @ v
            flops["experts"] += experts_per_token * 2 * tokens * 2 * dim * hidden
            flops["routers"] += 2 * tokens * dim * routers
    flops["total"] = sum(flops.values())
    return dict(flops)


def short_count(n: int) -> str:
    """A parameter count as 1.234B or 5.678M."""
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"

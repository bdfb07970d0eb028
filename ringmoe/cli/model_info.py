"""``ringmoe model-info CONFIG``: parameters (total, per component, active per token) and FLOPs per sample.

The model is built on the ``meta`` device, so the 14.7B config is counted in seconds without memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ringmoe.config.schema import load_model_config
from ringmoe.core.errors import ConfigError
from ringmoe.models.build import build_model
from ringmoe.models.memory import GIB, Layout, memory_per_rank
from ringmoe.models.size import COMPONENTS, forward_flops_per_sample, parameter_report

# The layouts `ringmoe model-info --memory` shows on 80 GB GPUs. Each router has 4 experts and DeepSpeed places
# whole experts, so EP is at most 4; TP 2 (14 heads in stage 1) is shown on 64 GPUs.
DEFAULT_LAYOUTS = (
    Layout(gpus=8, expert_parallel=4, zero_stage=2),
    Layout(gpus=64, tensor_parallel=2, expert_parallel=4, zero_stage=1),
    Layout(gpus=256, expert_parallel=4, zero_stage=1),
)


def parse_layout(text: str) -> Layout:
    """``GPUS:TP:EP:ZERO[:MICRO_BATCH]``, e.g. ``64:2:4:1``."""
    try:
        values = [int(v) for v in text.split(":")]
        if len(values) not in (4, 5):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--layout {text!r}: expected GPUS:TP:EP:ZERO[:MICRO_BATCH], e.g. 64:2:4:1") from None
    gpus, tp, ep, zero, *micro = values
    return Layout(
        gpus=gpus, tensor_parallel=tp, expert_parallel=ep, zero_stage=zero, micro_batch=micro[0] if micro else 8
    )


def skysense_info(config) -> str:
    """Parameters of the SkySense recipe by part (meta device): the released encoder and what pretraining adds."""
    from ringmoe.recipes.build import build_pretraining_model

    with torch.device("meta"):
        model = build_pretraining_model(config)
    encoder = model.student

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    spatial = {m: count(e) for m, e in encoder.spatial.items()}
    total_encoder = count(encoder)
    lines = [
        f"{config.name}: {_count(total_encoder)} encoder parameters (SkySense recipe), "
        f"{_count(count(model))} in pretraining (student, EMA teacher, heads; prototypes are a buffer)",
        f"  input {config.img_size}x{config.img_size} per date, patch {config.patch_size}, depths {config.depths}, "
        f"width {config.embed_dim}; fusion depth {config.fusion.depth}, {config.fusion.heads} heads, "
        f"{config.fusion.experts} routed experts per FFN",
    ]
    lines += [f"  spatial encoder {m:<16}{n:>16,}" for m, n in spatial.items()]
    lines.append(f"  {'temporal fusion':<32}{total_encoder - sum(spatial.values()):>16,}")
    return "\n".join(lines)


def model_info(path: str | Path, overrides: Sequence[str] = (), layouts: Sequence[Layout] = ()) -> str:
    config = load_model_config(path, overrides)
    if config.recipe == "skysense":
        return skysense_info(config)
    with torch.device("meta"):
        model = build_model(config)
    report = parameter_report(model, list(config.in_chans))
    flops = forward_flops_per_sample(config)
    active = max(report.active_per_token.values())
    lines = [
        f"{config.name}: {_count(report.encoder)} encoder parameters "
        f"({_count(report.total)} with the SimMIM decoders), {_count(active)} active per token",
        f"  input {config.img_size}x{config.img_size}, patch {config.patch_size}, depths {config.depths}, "
        f"width {config.embed_dim}, experts per block: modal {config.modal_experts} x {len(config.in_chans)} "
        f"modalities, collaborative {config.collab_experts}, shared {int(config.shared_expert)}",
        f"  {'component':<16}{'parameters':>16}{'share':>8}",
    ]
    for component in COMPONENTS:
        count = report.by_component.get(component, 0)
        if count:
            lines.append(f"  {component:<16}{count:>16,}{count / report.total:>8.1%}")
    lines.append("  active per token: " + ", ".join(f"{m} {_count(n)}" for m, n in report.active_per_token.items()))
    lines.append(
        f"  forward FLOPs per sample: {flops['total'] / 1e9:.1f} GFLOPs (training step ~3x: "
        f"{3 * flops['total'] / 1e9:.1f}); " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items() if k != "total")
    )
    if layouts:
        lines += memory_table(report, config, layouts)
    return "\n".join(lines)


def memory_table(report, config, layouts: Sequence[Layout]) -> list[str]:
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


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"

"""``ringmoe model-info CONFIG``: parameters (total, per component, active per token) and FLOPs per sample.

The model is built on the ``meta`` device, so the 14.7B config is counted in seconds without memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ringmoe.config.schema import load_model_config
from ringmoe.models.build import build_model
from ringmoe.models.size import COMPONENTS, forward_flops_per_sample, parameter_report


def model_info(path: str | Path, overrides: Sequence[str] = ()) -> str:
    config = load_model_config(path, overrides)
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
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"

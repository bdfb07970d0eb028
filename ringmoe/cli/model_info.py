"""``ringmoe model-info CONFIG``: parameters (total, per component, active per token) and FLOPs per sample.

The model is built on the ``meta`` device, so the 14.7B config is counted in seconds without memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ringmoe.config.schema import load_model_config
from ringmoe.core.errors import ConfigError
from ringmoe.models.memory import Layout
from ringmoe.recipes.registry import recipe_of

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


def model_info(path: str | Path, overrides: Sequence[str] = (), layouts: Sequence[Layout] = ()) -> str:
    config = load_model_config(path, overrides)
    return "\n".join(recipe_of(config).describe(config, list(layouts)))

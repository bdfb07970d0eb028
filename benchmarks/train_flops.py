"""(b) Achieved FLOP/s of a full training step (forward, SimMIM loss, backward, AdamW) ÷ ``torch.mm`` FLOP/s.

Only model FLOPs count: ``forward_flops_per_sample`` (encoder matmuls, decoders left out) x 3 for forward and
backward; routing, gathers, norms and the optimizer are overhead that lowers the ratio.
"""

from __future__ import annotations

import torch

from benchmarks.common import mm_flops_per_second, seconds_per_call, synthetic_batch
from ringmoe.config.schema import load_config
from ringmoe.models.factory import build_model
from ringmoe.models.size import forward_flops_per_sample
from ringmoe.objectives.factory import build_objective


def bench_train_flops(
    config_path: str, model_overrides: list[str], per_modality: int, repeats: int
) -> dict[str, float]:
    """``config_path``: a run config; the step uses its objective (reconstruction plus physical targets)."""
    run = load_config(config_path, [f"model.{override}" for override in model_overrides])
    config = run.model
    model = build_model(config, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective = build_objective(run.objective, config)
    masks = objective.masks
    batch = synthetic_batch(config, per_modality)
    step_masks = masks.for_batch(batch, torch.Generator().manual_seed(0))

    def step() -> None:
        reconstructions, output = model(batch, step_masks)
        loss, _ = objective(batch, reconstructions, output, step_masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s = seconds_per_call(step, repeats, warmup=2)
    samples = per_modality * len(config.in_chans)
    achieved = 3 * forward_flops_per_sample(config)["total"] * samples / step_s
    peak = mm_flops_per_second()
    return {"achieved_flops": achieved, "peak_flops": peak, "ratio": achieved / peak, "step_ms": step_s * 1e3}

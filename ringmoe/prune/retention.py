"""How much of the unpruned model's quality a pruned model keeps: masked-reconstruction loss on held-out batches.

Both models see the same batches with the same SimMIM masks (one generator seed per evaluation) and are scored on
the pruned model's modalities. Retention of a loss is ``unpruned / pruned``: 1.0 keeps everything, 0.8 means the
pruned loss is 25% higher. (A linear-probe score joins this once the evaluation harness exists.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ringmoe.core.batch import MultiModalBatch
from ringmoe.objectives.simmim import SimMIMLoss

_NOT_QUALITY = ("loss/aux", "loss/router_z")  # router regularisers, not reconstruction quality


def restrict(batch: MultiModalBatch, modalities: Sequence[str]) -> MultiModalBatch:
    return MultiModalBatch({m: t for m, t in batch.images.items() if m in modalities}, batch.keys)


@torch.no_grad()
def reconstruction_losses(
    model: nn.Module,
    objective: SimMIMLoss,
    batches: Sequence[MultiModalBatch],
    modalities: Sequence[str],
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Mean over ``batches`` of every reconstruction and physical-target loss of ``modalities``, and their
    weighted ``loss/total`` (router losses excluded).

    The model sees every modality of a batch it has a patch embedding for (the unpruned model as it was trained,
    all modalities routed together; a pruned one as deployed); masks are drawn for the whole batch, so every
    model scores the same masked pixels."""
    generator = torch.Generator().manual_seed(seed)
    known = set(getattr(model, "encoder", model).patch_embed)
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            masks = {m: mask.to(device) for m, mask in objective.masks.for_batch(batch, generator).items()}
            inputs = restrict(batch, [m for m in batch.modalities() if m in known])
            reconstructions, output = model(inputs.to(device, dtype), {m: masks[m] for m in inputs.images})
            target = restrict(batch, modalities).to(device)  # losses in float32 whatever the model's dtype
            scored = {m: reconstructions[m].float() for m in target.images}
            _, metrics = objective(target, scored, output, {m: masks[m] for m in target.images})
            metrics["loss/total"] = metrics["loss/reconstruction"] + metrics["loss/physics"]
            for key, value in metrics.items():
                if key not in _NOT_QUALITY:
                    sums[key] = sums.get(key, 0.0) + value
    finally:
        model.train(was_training)
    return {key: value / len(batches) for key, value in sums.items()}


def retention(unpruned: dict[str, float], pruned: dict[str, float]) -> dict[str, float]:
    return {key: unpruned[key] / pruned[key] for key in pruned if key in unpruned and pruned[key] > 0}

"""Fold experts into one: a gate-mass-weighted average of their weights, hidden units matched first.

Two experts trained apart compute with their hidden units in unrelated orders, so averaging them unit by unit
mixes unrelated features. ``align_hidden`` permutes one expert's hidden units (rows of ``fc1``, columns of
``fc2``) to best match the other's, by weight matching (Ainsworth et al., Git Re-Basin): a linear assignment on
the inner products of each unit's incoming weights, bias and outgoing weights. The permutation does not change
what the expert computes, only which units the average pairs.
"""

from __future__ import annotations

import torch

Expert = dict[str, torch.Tensor]  # fc1.weight (H, D), fc1.bias (H,), fc2.weight (D, H), fc2.bias (D,)


def _unit_features(expert: Expert) -> torch.Tensor:
    return torch.cat([expert["fc1.weight"], expert["fc1.bias"][:, None], expert["fc2.weight"].T], dim=1).float()


def align_hidden(reference: Expert, other: Expert) -> Expert:
    """``other`` with its hidden units permuted to match ``reference``'s (the same function of its input).
    Memory: the hidden x hidden similarity in float64 (what the assignment solver takes), e.g. 128 MiB at 4096."""
    from scipy.optimize import linear_sum_assignment

    cost = (_unit_features(reference) @ _unit_features(other).T).double().neg_().numpy()  # in place: no copy
    _, order = linear_sum_assignment(cost)
    del cost
    order = torch.as_tensor(order)
    return {
        "fc1.weight": other["fc1.weight"][order],
        "fc1.bias": other["fc1.bias"][order],
        "fc2.weight": other["fc2.weight"][:, order],
        "fc2.bias": other["fc2.bias"],
    }


def merge_experts(members: list[Expert], weights: list[float], align: bool = True) -> Expert:
    """Weighted average of ``members`` (the kept expert first; the others are aligned to it when ``align``),
    accumulated in place in float32: memory for the result and one aligned member at a time."""
    total = sum(weights)
    share = [w / total for w in weights] if total > 0 else [1.0 / len(members)] * len(members)
    reference = members[0]
    merged = {key: tensor.float() * share[0] for key, tensor in reference.items()}
    for weight, other in zip(share[1:], members[1:]):
        aligned = align_hidden(reference, other) if align else other
        for key, tensor in aligned.items():
            merged[key].add_(tensor.float(), alpha=weight)
        del aligned
    return {key: tensor.to(reference[key].dtype) for key, tensor in merged.items()}

"""Fit one output scale per kept expert so that the pruned router's output matches the original's.

A top-1 router weighs its expert by the softmax probability over *all* its experts. Remove some and the softmax
runs over fewer: every kept expert's weight grows (with one expert left it is always 1), so the pruned layer
adds more of each expert than the model was trained with. Measured on the tiny model, that distortion costs
more than the experts removed. Here each kept expert k gets the least-squares scale

    s_k = sum <a(x), y(x)> / sum ||a(x)||^2   over calibration tokens the pruned router sends to k,

with ``a`` the pruned router's output and ``y`` the original router's output on the same tokens (the original
model's activations, caught by forward hooks), and ``s_k`` is folded into the expert's ``fc2`` (exact: the
expert's output is linear in ``fc2``). s = 1 is one of the candidates, so the fit never does worse on them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ringmoe.core.batch import MultiModalBatch
from ringmoe.models.moe import RoutedExperts
from ringmoe.prune.calibrate import routed_experts, run_hooked
from ringmoe.prune.merge import merge_experts
from ringmoe.prune.plan import PrunePlan, RouterDecision


def pruned_router(router: RoutedExperts, decision: RouterDecision, align: bool) -> RoutedExperts:
    """The router ``decision`` leaves, built in memory from the original one (copies; the original is unchanged)."""
    first = router.experts[0]
    pruned = RoutedExperts(
        router.name, first.fc1.in_features, first.fc1.out_features, len(decision.keep),
        router.capacity_factor, router.min_capacity,
    ).to(router.gate.weight)  # fmt: skip
    pruned.gate.weight.data.copy_(router.gate.weight[decision.keep])
    for index, kept in enumerate(decision.keep):
        members = [kept] + sorted(j for j, k in decision.merged_into.items() if k == kept)
        states = [router.experts[m].state_dict() for m in members]
        if len(members) > 1:
            states = [merge_experts(states, [decision.merge_weights[m] for m in members], align=align)]
        pruned.experts[index].load_state_dict(states[0])
    return pruned


class _Fit:
    def __init__(self, routers: dict[str, RoutedExperts]) -> None:
        self.routers = routers
        self.numerator = {name: torch.zeros(r.num_experts, dtype=torch.float64) for name, r in routers.items()}
        self.denominator = {name: torch.zeros(r.num_experts, dtype=torch.float64) for name, r in routers.items()}

    def router_ran(self, module: RoutedExperts, args: tuple, output: tuple) -> None:
        pruned = self.routers.get(module.name)
        if pruned is None:
            return
        tokens, original = args[0], output[0].double()
        routed, _, _ = pruned(tokens)
        routed = routed.double()
        chosen = torch.argmax(nn.functional.linear(tokens.float(), pruned.gate.weight.float()), dim=1)
        self.numerator[module.name].index_add_(0, chosen, (routed * original).sum(dim=-1))
        self.denominator[module.name].index_add_(0, chosen, routed.pow(2).sum(dim=-1))

    def scales(self) -> dict[str, list[float]]:
        result = {}
        for name, numerator in self.numerator.items():
            denominator = self.denominator[name]
            fitted = torch.where(denominator > 0, numerator / denominator.clamp(min=1e-30), torch.ones_like(numerator))
            result[name] = fitted.clamp(min=0.0).tolist()  # a negative scale would flip the expert: keep it off
        return result


@torch.no_grad()
def fit_output_scales(
    model: nn.Module,
    plan: PrunePlan,
    batches: Iterable[MultiModalBatch],
    masks_for=None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, list[float]]:
    """Per pruned router, the scale of each kept expert (in ``decision.keep`` order). ``batches`` should hold the
    deployment modalities only: those are the tokens the pruned model will route."""
    originals = routed_experts(model)
    pruned = {
        name: pruned_router(originals[name], decision, plan.merge_align)
        for name, decision in plan.routers.items()
        if decision.keep
    }
    fit = _Fit(pruned)
    handles = [router.register_forward_hook(fit.router_ran) for name, router in originals.items() if name in pruned]
    for _ in run_hooked(model, batches, handles, masks_for, device, dtype):
        pass
    return fit.scales()

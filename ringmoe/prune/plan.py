"""Which experts each router keeps, from measured routing: the pruning strategies.

A plan is decided per router from a ``RoutingReport`` (what the model did on the user's data), so two users with
different data or deployment modalities get different models from the same checkpoint. How many experts per
stage comes from explicit counts or a parameter budget (``budget.counts_for_budget``); which ones, from the
strategy:

- ``modality_aware``: a modal router keeps the experts with the largest share of its modality's contribution;
  the collaborative router ranks experts by their share averaged over the deployment modalities, so a modality
  with few calibration tokens still counts as much as a common one;
- ``global``: contribution summed over all calibration tokens, whatever the modality;
- ``random``: a seeded random choice, the baseline that the measured strategies must beat;
- ``to_dense``: no routed expert anywhere: the shared expert alone is the FFN and no router is left.

With ``merge``, each removed expert is folded into the kept expert that its tokens are rerouted to once it is
gone (the largest ``affinity`` among the kept ones), weighted by gate mass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ringmoe.config.schema import ModelConfig, PruneConfig
from ringmoe.core.errors import ConfigError
from ringmoe.core.structured import to_dict
from ringmoe.prune.budget import counts_for_budget, encoder_parameters, parse_budget
from ringmoe.prune.calibrate import ExpertUsage, RouterUsage, RoutingReport


@dataclass
class RouterDecision:
    name: str
    kind: str
    stage: int
    modality: str | None
    scores: list[float]  # the strategy's importance per source expert
    keep: list[int]  # source expert indices kept, in source order: kept expert i of the pruned router is keep[i]
    merged_into: dict[int, int] = field(default_factory=dict)  # removed source expert -> kept source expert
    merge_weights: list[float] = field(default_factory=list)  # gate mass per source expert (merge only)
    scales: list[float] = field(default_factory=list)  # output scale per kept expert, folded into fc2 (empty: 1)
    fold: bool = False  # the one kept expert joins the shared expert as extra hidden units; the router goes
    reason: str = ""

    @property
    def removed(self) -> list[int]:
        return [e for e in range(len(self.scores)) if e not in self.keep]


@dataclass
class PrunePlan:
    strategy: str
    merge: bool
    merge_align: bool
    modalities: list[str]  # deployment modalities
    source: ModelConfig
    pruned: ModelConfig
    routers: dict[str, RouterDecision]  # every router of the source model

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "merge": self.merge,
            "merge_align": self.merge_align,
            "modalities": self.modalities,
            "source_model": to_dict(self.source),
            "pruned_model": to_dict(self.pruned),
            "encoder_parameters": {
                "source": encoder_parameters(self.source),
                "pruned": encoder_parameters(self.pruned),
            },
            "routers": [
                {
                    "name": d.name,
                    "keep": d.keep,
                    "removed": d.removed,
                    "merged_into": {str(k): v for k, v in d.merged_into.items()},
                    "output_scales": [round(s, 6) for s in d.scales],
                    "folded_into_shared": d.fold,
                    "scores": [round(s, 6) for s in d.scores],
                    "reason": d.reason,
                }
                for d in self.routers.values()
            ],
        }


def deployment_modalities(source: ModelConfig, prune: PruneConfig) -> list[str]:
    if not prune.modalities:
        return list(source.in_chans)
    missing = sorted(set(prune.modalities) - set(source.in_chans))
    if missing:
        raise ConfigError(f"prune.modalities {missing} are not modalities of the model {list(source.in_chans)}")
    return [m for m in source.in_chans if m in prune.modalities]


def pruned_config(source: ModelConfig, prune: PruneConfig, modalities: list[str]) -> ModelConfig:
    """The pruned model's config: deployment modalities only, expert counts per stage."""
    deployed = dataclasses.replace(
        source,
        in_chans={m: c for m, c in source.in_chans.items() if m in modalities},
        decoder_extra_channels={m: c for m, c in source.decoder_extra_channels.items() if m in modalities},
    )
    stages = len(source.depths)
    if prune.strategy == "to_dense":
        if not source.shared_expert:
            raise ConfigError("prune.strategy to_dense keeps the shared expert alone, but model.shared_expert is false")
        multiple = [source.shared_multiple(s) + int(prune.dense_fold_collab and source.collab_experts[s] > 0)
                    for s in range(stages)]  # fmt: skip
        return dataclasses.replace(
            deployed,
            modal_experts=[0] * stages,
            collab_experts=[0] * stages,
            shared_expert_multiple=multiple if multiple != [1] * stages else [],
        )
    if prune.modal_experts or prune.collab_experts:
        counts = {}
        for key in ("modal_experts", "collab_experts"):
            given, limit = list(getattr(prune, key)), getattr(source, key)
            if len(given) != stages:
                raise ConfigError(f"prune.{key} {given}: give one count per stage ({stages}), or use prune.budget")
            if any(g > n for g, n in zip(given, limit)):
                raise ConfigError(f"prune.{key} {given} exceeds the model's model.{key} {limit}")
            counts[key] = given
        return dataclasses.replace(deployed, **counts)
    if prune.budget:
        return counts_for_budget(deployed, parse_budget(prune.budget))
    raise ConfigError(
        f"prune.strategy {prune.strategy}: set prune.budget (e.g. 1B) or prune.modal_experts and prune.collab_experts"
    )


def _shares(usage: ExpertUsage) -> torch.Tensor:
    total = float(usage.contribution.sum())
    return usage.contribution / total if total > 0 else torch.zeros_like(usage.contribution)


def _scores(router: RouterUsage, strategy: str, modalities: list[str], generator: torch.Generator) -> torch.Tensor:
    if strategy == "random":
        return torch.rand(router.experts, generator=generator, dtype=torch.float64)
    if strategy == "modality_aware":
        measured = [m for m in modalities if m in router.by_modality]
        if not measured:
            return torch.zeros(router.experts, dtype=torch.float64)
        return sum(_shares(router.by_modality[m]) for m in measured) / len(measured)
    return router.total().contribution  # global, and to_dense (for the report)


def _describe(router: RouterUsage, decision: RouterDecision, modalities: list[str], strategy: str) -> str:
    if not decision.keep:
        if router.kind == "modal" and router.modality not in modalities:
            return f"removed: {router.modality} is not deployed"
        return "removed: no routed expert in this stage"
    if strategy == "random":
        return f"kept {decision.keep} at random (baseline)"
    shares = _shares(router.total(modalities if strategy == "modality_aware" else None))
    kept = float(shares[decision.keep].sum()) if shares.sum() > 0 else 0.0
    what = (
        router.modality if router.kind == "modal" else "+".join(modalities if strategy == "modality_aware" else ["all"])
    )
    text = f"kept {decision.keep}, {kept:.0%} of the measured contribution ({what} tokens)"
    if decision.removed:
        text += f"; removed {decision.removed} ({1 - kept:.0%})"
    if decision.merged_into:
        text += "; merged " + ", ".join(f"{j}->{k}" for j, k in sorted(decision.merged_into.items()))
    if decision.fold:
        text += "; folded into the shared expert (no router left)"
    return text


def make_plan(report: RoutingReport, source: ModelConfig, prune: PruneConfig) -> PrunePlan:
    modalities = deployment_modalities(source, prune)
    pruned = pruned_config(source, prune, modalities)
    generator = torch.Generator().manual_seed(prune.seed)
    routers: dict[str, RouterDecision] = {}
    expected = routers_of(source)
    missing = sorted(set(expected) - set(report.routers))
    if missing:
        raise ConfigError(f"the routing report has no statistics for {missing[:3]} ({len(missing)} routers)")
    for name in expected:
        router = report.routers[name]
        if router.experts != expected[name]:
            raise ConfigError(f"routing report: {name} has {router.experts} experts, the checkpoint {expected[name]}")
        scores = _scores(router, prune.strategy, modalities, generator)
        deployed = router.kind == "collab" or router.modality in modalities
        counts = pruned.collab_experts if router.kind == "collab" else pruned.modal_experts
        keep_count = counts[router.stage] if deployed else 0
        fold = prune.strategy == "to_dense" and prune.dense_fold_collab and router.kind == "collab"
        keep_count = 1 if fold else keep_count
        # Highest score first; ties to the lower index, so a plan is reproducible.
        ranked = sorted(range(router.experts), key=lambda e: (-float(scores[e]), e))
        decision = RouterDecision(
            name, router.kind, router.stage, router.modality, scores.tolist(), sorted(ranked[:keep_count]), fold=fold
        )
        if prune.merge and decision.keep and decision.removed:
            usage = router.total(modalities)
            decision.merge_weights = usage.gate_mass.tolist()
            decision.merged_into = _merge_targets(usage, decision.keep, decision.removed, scores)
        decision.reason = _describe(router, decision, modalities, prune.strategy)
        routers[name] = decision
    return PrunePlan(prune.strategy, prune.merge, prune.merge_align, modalities, source, pruned, routers)


def _merge_targets(usage: ExpertUsage, keep: list[int], removed: list[int], scores: torch.Tensor) -> dict[int, int]:
    targets = {}
    for expert in removed:
        affinity = usage.affinity[expert, keep]
        if float(affinity.sum()) > 0:
            targets[expert] = keep[int(torch.argmax(affinity))]
        else:  # never chosen on this data: into the most important kept expert
            targets[expert] = max(keep, key=lambda k: float(scores[k]))
    return targets


def routers_of(source: ModelConfig) -> dict[str, int]:
    """Router name -> experts, for every router the source model has."""
    routers = {}
    for stage, depth in enumerate(source.depths):
        for block in range(depth):
            prefix = f"stages.{stage}.blocks.{block}.ffn."
            if source.collab_experts[stage]:
                routers[prefix + "collab"] = source.collab_experts[stage]
            if source.modal_experts[stage]:
                for modality in source.in_chans:
                    routers[f"{prefix}modal.{modality}"] = source.modal_experts[stage]
    return routers

"""Measure how a trained model routes: per block, per router, per modality and per expert.

Forward hooks on every ``HierarchicalMoE`` and ``RoutedExperts`` (the model code is not touched) record, over a
calibration stream:

- ``tokens``: tokens whose top-1 choice is the expert (before the capacity limit);
- ``kept``: of those, the ones within capacity (all of them: calibration runs in eval mode, where routing is dropless);
- ``gate_mass``: summed router probability of the expert;
- ``contribution``: summed norm of the expert's gate-weighted output, ``g(x) * ||f(x)||`` (REAP's saliency, summed
  rather than averaged, so that it weighs how often an expert is used as well as how much it adds);
- ``affinity[j][k]``: summed probability of expert k over tokens whose top-1 is j: where j's tokens go if j is
  removed (the router then picks the best remaining expert).

The collaborative router sees every modality's tokens at once; the pre-hook on its block records which rows
belong to which modality, so its statistics are split by modality too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import CheckpointError
from ringmoe.models.moe import HierarchicalMoE, RoutedExperts, top1_routing

REPORT_FORMAT = "ringmoe-routing-report"
REPORT_VERSION = 1
STAT_KEYS = ("tokens", "kept", "gate_mass", "contribution")
_ROUTER_NAME = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.(collab|modal\.(\w+))$")


@dataclass
class ExpertUsage:
    """One router's statistics over one modality's tokens, one entry per expert."""

    tokens: torch.Tensor
    kept: torch.Tensor
    gate_mass: torch.Tensor
    contribution: torch.Tensor
    affinity: torch.Tensor

    @classmethod
    def zeros(cls, experts: int) -> "ExpertUsage":
        zero = torch.zeros(experts, dtype=torch.float64)
        return cls(
            zero.clone(), zero.clone(), zero.clone(), zero.clone(), torch.zeros(experts, experts, dtype=torch.float64)
        )

    def reap(self) -> torch.Tensor:
        """REAP's mean saliency per routed token (0 for an expert that kept no token)."""
        return self.contribution / self.kept.clamp(min=1)

    def to_dict(self) -> dict:
        values = {key: getattr(self, key).tolist() for key in (*STAT_KEYS, "affinity")}
        return {**values, "reap": self.reap().tolist()}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ExpertUsage":
        try:
            return cls(*(torch.tensor(data[key], dtype=torch.float64) for key in (*STAT_KEYS, "affinity")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: bad expert statistics ({exc})") from None


@dataclass
class RouterUsage:
    name: str  # as in ``RouterStats``: ``stages.S.blocks.B.ffn.collab`` or ``...ffn.modal.<modality>``
    stage: int
    block: int
    kind: str  # collab | modal
    modality: str | None  # the modal router's modality
    experts: int
    by_modality: dict[str, ExpertUsage] = field(default_factory=dict)

    def total(self, modalities: Iterable[str] | None = None) -> ExpertUsage:
        """Statistics summed over ``modalities`` (default: all measured)."""
        total = ExpertUsage.zeros(self.experts)
        for modality, usage in self.by_modality.items():
            if modalities is None or modality in modalities:
                for key in (*STAT_KEYS, "affinity"):
                    getattr(total, key).add_(getattr(usage, key))
        return total


def parse_router_name(name: str) -> tuple[int, int, str, str | None]:
    match = _ROUTER_NAME.match(name)
    if not match:
        raise ValueError(f"not a router name: {name!r}")
    stage, block, path, modality = match.groups()
    return int(stage), int(block), "modal" if modality else "collab", modality


@dataclass
class RoutingReport:
    batches: int
    samples: dict[str, int]  # calibration images per modality
    routers: dict[str, RouterUsage]

    def to_dict(self) -> dict:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "batches": self.batches,
            "samples": self.samples,
            "routers": [
                {
                    "name": r.name,
                    "stage": r.stage,
                    "block": r.block,
                    "kind": r.kind,
                    "modality": r.modality,
                    "experts": r.experts,
                    "by_modality": {m: u.to_dict() for m, u in r.by_modality.items()},
                }
                for r in self.routers.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "RoutingReport":
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT or data.get("version") != REPORT_VERSION:
            found = (data.get("format"), data.get("version")) if isinstance(data, dict) else (type(data).__name__, None)
            raise CheckpointError(
                f"{where}: not a routing report (format {found[0]!r} version {found[1]!r}, "
                f"expected {REPORT_FORMAT!r} version {REPORT_VERSION})"
            )
        try:
            routers = {}
            for entry in data["routers"]:
                usage = {
                    m: ExpertUsage.from_dict(u, f"{where}: {entry['name']}.{m}")
                    for m, u in entry["by_modality"].items()
                }
                routers[entry["name"]] = RouterUsage(
                    entry["name"], entry["stage"], entry["block"], entry["kind"], entry["modality"], entry["experts"],
                    usage,
                )  # fmt: skip
            return cls(int(data["batches"]), dict(data["samples"]), routers)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"{where}: routing report is incomplete or malformed ({type(exc).__name__}: {exc})"
            ) from None


class _Recorder:
    """The hooks' shared state: the modality rows of the block running now, and the running sums."""

    def __init__(self, routers: dict[str, RoutedExperts]) -> None:
        self.spans: list[tuple[str, int, int]] = []
        self.routers: dict[str, RouterUsage] = {}
        for name, router in routers.items():
            stage, block, kind, modality = parse_router_name(name)
            self.routers[name] = RouterUsage(name, stage, block, kind, modality, router.num_experts)

    def block_started(self, module: HierarchicalMoE, args: tuple) -> None:
        x, modality_sizes = args
        per_sample = x[0].numel() // x.shape[-1]
        self.spans, start = [], 0
        for modality, count in modality_sizes.items():
            self.spans.append((modality, start, start + count * per_sample))
            start += count * per_sample

    def router_ran(self, module: RoutedExperts, args: tuple, output: tuple) -> None:
        usage = self.routers[module.name]
        tokens, routed = args[0], output[0]
        if usage.kind == "modal":
            if not any(m == usage.modality for m, _, _ in self.spans):
                return  # the one zero token that keeps collectives in step for an absent modality
            spans = [(usage.modality, 0, tokens.shape[0])]
        else:
            spans = self.spans
        logits = F.linear(tokens.float(), module.gate.weight.float())
        chosen, weight, _, _ = top1_routing(logits, module.capacity(tokens.shape[0]))
        gates = F.softmax(logits, dim=1).double()
        norms = routed.double().norm(dim=-1)  # = g(x) * ||f(x)||; 0 where the capacity dropped the token
        experts = module.num_experts
        for modality, begin, end in spans:
            picked, kept = chosen[begin:end], weight[begin:end] > 0
            stats = usage.by_modality.setdefault(modality, ExpertUsage.zeros(experts))
            stats.tokens += torch.bincount(picked, minlength=experts).double()
            stats.kept += torch.bincount(picked[kept], minlength=experts).double()
            stats.gate_mass += gates[begin:end].sum(dim=0)
            stats.contribution += torch.zeros(experts, dtype=torch.float64).index_add_(0, picked, norms[begin:end])
            stats.affinity += F.one_hot(picked, experts).double().T @ gates[begin:end]


def run_hooked(model: nn.Module, batches: Iterable[MultiModalBatch], handles: list, masks_for, device, dtype):
    """Forward every batch through ``model`` in eval mode (yielding each after its forward), then remove the hook
    ``handles`` and restore the mode, also when a forward fails. ``masks_for(batch)``: SimMIM masks or None."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            masks = masks_for(batch) if masks_for is not None else None
            if masks is not None:
                masks = {m: mask.to(device) for m, mask in masks.items()}
            model(batch.to(device, dtype), masks)
            yield batch
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def routed_experts(model: nn.Module) -> dict[str, RoutedExperts]:
    return {m.name: m for m in model.modules() if isinstance(m, RoutedExperts)}


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[MultiModalBatch],
    masks_for=None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    total: int | None = None,
) -> RoutingReport:
    """Stream ``batches`` through ``model`` (a ``RingMoESimMIM`` or ``RingMoEEncoder``) in eval mode.

    ``masks_for(batch) -> masks`` gives SimMIM masks per batch (None: unmasked inputs)."""
    recorder = _Recorder(routed_experts(model))
    handles = [
        module.register_forward_pre_hook(recorder.block_started)
        for module in model.modules()
        if isinstance(module, HierarchicalMoE)
    ]
    handles += [router.register_forward_hook(recorder.router_ran) for router in routed_experts(model).values()]
    samples: dict[str, int] = {}
    count = 0
    for batch in run_hooked(model, tqdm(batches, total=total, desc="calibrate", unit="batch"), handles, masks_for,
                            device, dtype):  # fmt: skip
        count += 1
        for modality, size in batch.sizes().items():
            samples[modality] = samples.get(modality, 0) + size
    return RoutingReport(count, samples, recorder.routers)

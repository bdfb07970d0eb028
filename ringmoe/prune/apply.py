"""Write the pruned checkpoint from a consolidated one, tensor by tensor.

Every output tensor is an ``_Item``: the source tensors it needs and how to make it (copy, rename, keep a
router's rows, or fold experts together). Items are ordered by the position of their last source in the
source files, so one pass over the source (``iter_sharded``) completes them in order and memory holds only
the tensors of items still waiting for a source: one router's experts at most, when merging.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME, expected_state, state_mismatch
from ringmoe.checkpoint.safetensors_io import TensorSpec, iter_sharded, sharded_specs, write_sharded_stream
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json
from ringmoe.core.structured import to_dict
from ringmoe.prune.merge import merge_experts
from ringmoe.prune.plan import PrunePlan, RouterDecision

log = logging.getLogger(__name__)
_ROUTER_TENSOR = re.compile(
    r"^encoder\.(stages\.\d+\.blocks\.\d+\.ffn\.(?:collab|modal\.\w+))\.(gate\.weight|experts\.(\d+)\.(.+))$"
)
_SHARED_TENSOR = re.compile(r"^encoder\.(stages\.\d+\.blocks\.\d+\.ffn)\.shared\.(.+)$")
_PER_MODALITY = re.compile(r"^(?:encoder\.patch_embed|decoders)\.(\w+)\.")


@dataclass
class _Item:
    outputs: list[TensorSpec]
    sources: list[str]
    build: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]


def _copy(name: str) -> Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]:
    return lambda tensors: [tensors[name]]


def _plan_items(specs: list[TensorSpec], plan: PrunePlan) -> list[_Item]:
    position = {spec.name: index for index, spec in enumerate(specs)}
    by_name = {spec.name: spec for spec in specs}
    folded = {d.name.removesuffix(".collab") for d in plan.routers.values() if d.fold}  # blocks' ffn prefixes
    expert_params: dict[tuple[str, int], list[str]] = {}
    items: list[_Item] = []
    for spec in specs:
        modality = _PER_MODALITY.match(spec.name)
        if modality and modality.group(1) not in plan.modalities:
            continue
        shared = _SHARED_TENSOR.match(spec.name)
        if shared and shared.group(1) in folded:
            continue  # part of the fused dense FFN item
        router = _ROUTER_TENSOR.match(spec.name)
        if not router:
            items.append(_Item([spec], [spec.name], _copy(spec.name)))
            continue
        decision = plan.routers.get(router.group(1))
        if decision is None:
            raise CheckpointError(f"{spec.name}: router {router.group(1)} is not in the pruning plan")
        if router.group(2) == "gate.weight":
            if decision.keep and not decision.fold:
                rows = torch.tensor(decision.keep)
                shape = (len(decision.keep), *spec.shape[1:])
                items.append(
                    _Item(
                        [TensorSpec(spec.name, spec.dtype, shape)],
                        [spec.name],
                        lambda t, n=spec.name, r=rows: [t[n][r]],
                    )
                )
            continue
        expert_params.setdefault((decision.name, int(router.group(3))), []).append(router.group(4))
    for (router_name, expert), params in expert_params.items():
        decision = plan.routers[router_name]
        if expert not in decision.keep:
            continue  # dropped, or folded into the item of the expert it merges into
        make = _fused_item if decision.fold else _expert_item
        items.append(make(decision, expert, sorted(params), by_name, plan.merge_align))
    items.sort(key=lambda item: max(position[s] for s in item.sources))
    return items


def _kept_expert(decision: RouterDecision, expert: int, params: list[str], by_name: dict, align: bool):
    """The source tensors kept expert ``expert`` is made of (with the experts merged into it), and the function
    that makes its parameters from them: merged, and scaled by its refitted output scale."""
    prefix = f"encoder.{decision.name}.experts."
    members = [expert] + sorted(j for j, k in decision.merged_into.items() if k == expert)
    sources = [f"{prefix}{m}.{p}" for m in members for p in params]
    for source in sources:
        if source not in by_name:
            raise CheckpointError(f"{source}: missing from the consolidated checkpoint (expert {expert} needs it)")
    weights = [decision.merge_weights[m] for m in members] if len(members) > 1 else []
    scale = decision.scales[decision.keep.index(expert)] if decision.scales else 1.0

    def build(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        experts = [{p: tensors[f"{prefix}{m}.{p}"] for p in params} for m in members]
        made = merge_experts(experts, weights, align=align) if weights else experts[0]
        if scale != 1.0:  # the expert's output is linear in fc2: scaling it scales the output exactly
            made = {p: t * scale if p.startswith("fc2.") else t for p, t in made.items()}
        return made

    return sources, build


def _expert_item(decision: RouterDecision, expert: int, params: list[str], by_name: dict, align: bool) -> _Item:
    prefix = f"encoder.{decision.name}.experts."
    new = decision.keep.index(expert)
    outputs = [
        TensorSpec(f"{prefix}{new}.{p}", by_name[f"{prefix}{expert}.{p}"].dtype, by_name[f"{prefix}{expert}.{p}"].shape)
        for p in params
    ]
    sources, build = _kept_expert(decision, expert, params, by_name, align)
    return _Item(outputs, sources, lambda tensors: [build(tensors)[p] for p in params])


def _fused_item(decision: RouterDecision, expert: int, params: list[str], by_name: dict, align: bool) -> _Item:
    """Shared expert + the one kept collaborative expert as one FFN: their hidden units side by side. Exact: a
    router with one expert sends it every token with gate 1 (capacity covers them all), and the block adds the
    two outputs."""
    shared = f"encoder.{decision.name.removesuffix('.collab')}.shared."
    sources, build = _kept_expert(decision, expert, params, by_name, align)
    sources = [f"{shared}{p}" for p in params] + sources
    s = {p: by_name[f"{shared}{p}"] for p in params}
    e = {p: by_name[f"encoder.{decision.name}.experts.{expert}.{p}"] for p in params}
    shapes = {
        "fc1.weight": (s["fc1.weight"].shape[0] + e["fc1.weight"].shape[0], s["fc1.weight"].shape[1]),
        "fc1.bias": (s["fc1.bias"].shape[0] + e["fc1.bias"].shape[0],),
        "fc2.weight": (s["fc2.weight"].shape[0], s["fc2.weight"].shape[1] + e["fc2.weight"].shape[1]),
        "fc2.bias": s["fc2.bias"].shape,
    }
    outputs = [TensorSpec(f"{shared}{p}", s[p].dtype, shapes[p]) for p in params]

    def fuse(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        routed = build(tensors)
        own = {p: tensors[f"{shared}{p}"] for p in params}
        fused = {
            "fc1.weight": torch.cat([own["fc1.weight"], routed["fc1.weight"]], dim=0),
            "fc1.bias": torch.cat([own["fc1.bias"], routed["fc1.bias"]]),
            "fc2.weight": torch.cat([own["fc2.weight"], routed["fc2.weight"]], dim=1),
            "fc2.bias": own["fc2.bias"] + routed["fc2.bias"],
        }
        return [fused[p].to(own[p].dtype) for p in params]

    return _Item(outputs, sources, fuse)


def _stream(items: list[_Item], tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    owner = {source: index for index, item in enumerate(items) for source in item.sources}
    waiting: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        index = owner.get(name)
        if index is None:
            continue  # pruned away
        got = waiting.setdefault(index, {})
        got[name] = tensor
        item = items[index]
        if len(got) == len(item.sources):
            del waiting[index]
            for spec, out in zip(item.outputs, item.build(got)):
                yield spec.name, out.contiguous()
    if waiting:
        raise CheckpointError(f"source ended before {sum(len(items[i].sources) for i in waiting)} tensors were read")


def apply_plan(plan: PrunePlan, consolidated: Path, out_dir: Path, max_shard_bytes: int = 2 * 2**30) -> Path:
    """Stream ``consolidated`` into ``out_dir`` as the pruned model (safetensors shards + model config), checked
    name by name and shape by shape against the pruned model built on the meta device."""
    specs = sharded_specs(consolidated)
    items = _plan_items(specs, plan)
    out_specs = [spec for item in items for spec in item.outputs]
    mismatch = state_mismatch({spec.name: spec.shape for spec in out_specs}, expected_state(plan.pruned))
    if mismatch:
        raise CheckpointError(f"{consolidated}: the pruned tensors do not match the pruned model: {mismatch}")
    metadata = {"format": "ringmoe-consolidated", "pruned_from": consolidated.name, "strategy": plan.strategy}
    write_sharded_stream(out_specs, _stream(items, iter_sharded(consolidated)), out_dir, metadata, max_shard_bytes)
    atomic_write_json(out_dir / MODEL_CONFIG_NAME, to_dict(plan.pruned))
    log.info("pruned %d -> %d tensors into %s", len(specs), len(out_specs), out_dir)
    return out_dir

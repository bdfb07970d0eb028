"""Write a synthetic DeepSpeed MoE checkpoint (DeepSpeed's file names and keys, random weights) without
training: the layout ``ringmoe consolidate`` reads, at a size no training run here could reach.

    python -m tests.checkpoint.synthetic OUT_DIR [model overrides ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from ringmoe.checkpoint.consolidate import MAIN_FILE, expected_state
from ringmoe.checkpoint.save import FORMAT_VERSION, META_NAME
from ringmoe.config.schema import ModelConfig
from ringmoe.core.files import atomic_write_json
from ringmoe.core.structured import load_structured, to_dict

EXPERT = re.compile(r"^(.*)\.experts\.(\d+)\.(.*)$")


def synthetic_report(config: ModelConfig, seed: int = 0):
    """Routing statistics shaped like a calibration's (random contributions per router and modality), for
    pruning models no calibration here could run."""
    from ringmoe.prune.calibrate import ExpertUsage, RouterUsage, RoutingReport, parse_router_name
    from ringmoe.prune.plan import routers_of

    g = torch.Generator().manual_seed(seed)
    routers = {}
    for name, experts in routers_of(config).items():
        stage, block, kind, modality = parse_router_name(name)
        by_modality = {}
        for m in [modality] if modality else list(config.in_chans):
            usage = ExpertUsage.zeros(experts)
            usage.contribution = torch.rand(experts, generator=g, dtype=torch.float64)
            usage.tokens = usage.kept = usage.gate_mass = usage.contribution * 10
            usage.affinity = torch.rand(experts, experts, generator=g, dtype=torch.float64)
            by_modality[m] = usage
        routers[name] = RouterUsage(name, stage, block, kind, modality, experts, by_modality)
    return RoutingReport(1, {m: 1 for m in config.in_chans}, routers)


def write_synthetic_checkpoint(
    tag_dir: Path, config: ModelConfig, seed: int = 0, state: dict[str, torch.Tensor] | None = None
) -> None:
    """One file open at a time, so writing a large checkpoint needs the memory of one expert only. ``state``:
    the single-device weights to store (a real model's, buffers included) instead of random values."""
    tag_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    shapes = expected_state(config)
    module, experts = {}, {}  # DeepSpeed key -> single-device name
    for name in shapes:
        match = EXPERT.match(name)
        if match:
            prefix, index, rest = match.groups()
            key = f"{prefix}.moe.deepspeed_moe.experts.deepspeed_experts.{index}.{rest}"
            experts.setdefault(prefix, {}).setdefault(int(index), {})[key] = name
        else:
            module[name.replace(".gate.weight", ".moe.deepspeed_moe.gate.wg.weight")] = name

    def value(name: str) -> torch.Tensor:
        return state[name].clone() if state is not None else torch.randn(shapes[name], generator=generator)

    torch.save({"module": {k: value(n) for k, n in module.items()}}, tag_dir / MAIN_FILE)
    for layer, prefix in enumerate(experts):  # DeepSpeed numbers MoE layers in module order
        for index, keys in sorted(experts[prefix].items()):
            path = tag_dir / f"layer_{layer}_expert_{index}_mp_rank_00_model_states.pt"
            torch.save({k: value(n) for k, n in keys.items()}, path)
    meta = {"format_version": FORMAT_VERSION, "step": 1, "world_size": 1, "expert_parallel_size": 1}
    atomic_write_json(tag_dir / META_NAME, {**meta, "tensor_parallel_size": 1, "model": to_dict(config)})


def main(argv: list[str]) -> None:
    config = load_structured(ModelConfig, None, argv[1:])
    write_synthetic_checkpoint(Path(argv[0]), config)


if __name__ == "__main__":
    main(sys.argv[1:])

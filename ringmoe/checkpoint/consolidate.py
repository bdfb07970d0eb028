"""DeepSpeed MoE checkpoint (any EP size, ZeRO 0-2, TP=1) -> one safetensors state dict of the single-device model.

DeepSpeed's own ``zero_to_fp32.py`` cannot read MoE checkpoints. Here the non-expert weights come from
``mp_rank_00_model_states.pt`` and each expert from its ``layer_<L>_expert_<E>_mp_rank_00_model_states.pt``
(DeepSpeed already stores global expert indices in those keys). Every file is loaded with ``weights_only=True``
and the result is checked, name by name and shape by shape, against the model the checkpoint says it holds.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ringmoe.checkpoint.safetensors_io import TensorSpec, write_sharded_stream
from ringmoe.checkpoint.save import META_NAME
from ringmoe.config.schema import ModelConfig
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json
from ringmoe.core.structured import from_dict, to_dict
from ringmoe.models.build import build_model
from ringmoe.parallel.moe_keys import is_expert_key, to_single_device_key

log = logging.getLogger(__name__)
MODEL_CONFIG_NAME = "ringmoe_model.json"
MAIN_FILE = "mp_rank_00_model_states.pt"
EXPERT_FILE = re.compile(r"layer_(\d+)_expert_(\d+)_mp_rank_(\d+)_model_states\.pt$")


def read_meta(tag_dir: Path) -> dict:
    path = tag_dir / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: no {META_NAME}; the checkpoint is incomplete or not a ringmoe checkpoint")
    return json.loads(path.read_text())


def _load(path: Path, mmap: bool = False) -> dict:
    """``mmap``: tensors stay in the file's pages until read, so opening a file costs no memory."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for truncated/corrupt zip archives
        raise CheckpointError(f"{path}: cannot read checkpoint file ({type(exc).__name__}: {exc})") from None


def expected_state(model_config: ModelConfig) -> dict[str, torch.Size]:
    """Names and shapes of the single-device model, built on the meta device (no memory for weights)."""
    with torch.device("meta"):
        model = build_model(model_config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


@dataclass
class CheckpointSource:
    """Where every tensor of a DeepSpeed MoE checkpoint lives: per file, DeepSpeed key -> single-device name."""

    tag_dir: Path
    model_config: ModelConfig
    files: list[tuple[Path, dict[str, str]]]
    specs: list[TensorSpec]  # in reading order

    def tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor once, one file open at a time (memory-mapped), cast to ``dtype`` when floating."""
        for path, names in tqdm(self.files, desc="consolidate", unit="file", disable=len(self.files) < 50):
            states = _module_states(path, _load(path, mmap=True))
            for key, name in names.items():
                tensor = states[key]
                yield name, tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
            del states


def _module_states(path: Path, loaded: dict) -> dict[str, torch.Tensor]:
    if path.name == MAIN_FILE:
        module = loaded.get("module")
        if not isinstance(module, dict):
            raise CheckpointError(f"{path}: has no 'module' state dict")
        return module
    return loaded


def read_checkpoint_layout(tag_dir: Path) -> CheckpointSource:
    """Plan a read of ``tag_dir`` and check it against the model its meta names, before any data is read:
    a missing expert file, an unexpected tensor or a wrong shape is a ``CheckpointError`` naming the file."""
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: checkpoint directory not found")
    meta = read_meta(tag_dir)
    if meta.get("tensor_parallel_size", 1) != 1:
        raise CheckpointError(
            f"{tag_dir}: tensor-parallel checkpoints are not supported yet (TP={meta['tensor_parallel_size']})"
        )
    model_config = from_dict(ModelConfig, meta["model"], str(tag_dir / META_NAME))
    main_file = tag_dir / MAIN_FILE
    if not main_file.is_file():
        raise CheckpointError(f"{main_file}: missing (non-expert model states)")
    expected = expected_state(model_config)
    files, specs, seen = [], [], {}
    for path in [main_file, *sorted(p for p in tag_dir.iterdir() if EXPERT_FILE.match(p.name))]:
        states = _module_states(path, _load(path, mmap=True))
        names = {}
        for key, tensor in states.items():
            if path == main_file and is_expert_key(key):
                continue  # DeepSpeed keeps its local experts here too; the per-expert files are the full set
            name = to_single_device_key(key)
            if name in seen:
                raise CheckpointError(f"{path}: {name} is also in {seen[name]}")
            if name in expected and tensor.shape != expected[name]:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[name])}"
                )
            seen[name] = path.name
            names[key] = name
            specs.append(TensorSpec(name, tensor.dtype, tuple(tensor.shape)))
        files.append((path, names))
        del states
    _check_complete(set(seen), expected, tag_dir)
    return CheckpointSource(tag_dir, model_config, files, specs)


def read_deepspeed_checkpoint(tag_dir: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """The whole single-device state dict in memory (for small models and tests)."""
    source = read_checkpoint_layout(tag_dir)
    return {name: tensor.clone() for name, tensor in source.tensors()}, source.model_config


def _check_complete(names: set[str], expected: dict[str, torch.Size], where: Path) -> None:
    missing = sorted(set(expected) - names)
    if missing:
        experts = [k for k in missing if ".experts." in k]
        hint = " (an expert file layer_*_expert_*_model_states.pt is missing)" if experts else ""
        raise CheckpointError(f"{where}: {len(missing)} tensors missing{hint}, e.g. {missing[:3]}")
    unexpected = sorted(names - set(expected))
    if unexpected:
        raise CheckpointError(f"{where}: {len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")


def consolidate(
    tag_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32, max_shard_bytes: int = 2 * 2**30
) -> Path:
    """Stream ``tag_dir`` into sharded safetensors: one input file open (memory-mapped) and one tensor in memory
    at a time, so peak memory follows the largest tensor, not the model."""
    source = read_checkpoint_layout(tag_dir)
    specs = [TensorSpec(s.name, dtype if s.dtype.is_floating_point else s.dtype, s.shape) for s in source.specs]
    metadata = {"source": str(tag_dir.name), "format": "ringmoe-consolidated"}
    write_sharded_stream(specs, source.tensors(dtype), out_dir, metadata, max_shard_bytes)
    atomic_write_json(out_dir / MODEL_CONFIG_NAME, to_dict(source.model_config))
    log.info("consolidated %d tensors from %s into %s", len(specs), tag_dir, out_dir)
    return out_dir

"""Sharded safetensors in the HuggingFace layout: ``model-0000i-of-0000n.safetensors`` + index JSON with sha256.

Shards are filled in name order up to ``max_shard_bytes`` and each written atomically, so peak extra memory is
one shard, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, sha256_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _plan(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_sharded(
    state: dict[str, torch.Tensor], out_dir: Path, metadata: dict[str, str], max_shard_bytes: int = 2 * 2**30
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(state, max_shard_bytes)
    single = len(plan) == 1
    written, weight_map, checksums = [], {}, {}
    for index, names in enumerate(plan, start=1):
        name = SINGLE_NAME if single else f"model-{index:05d}-of-{len(plan):05d}.safetensors"
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        save_file({n: state[n] for n in names}, str(tmp), metadata=metadata)
        tmp.replace(path)
        checksums[name] = sha256_file(path)
        weight_map.update({n: name for n in names})
        written.append(path)
    total = sum(t.numel() * t.element_size() for t in state.values())
    atomic_write_json(
        out_dir / INDEX_NAME,
        {"metadata": {"total_size": total, "sha256": checksums, **metadata}, "weight_map": weight_map},
    )
    return written


def read_sharded(directory: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise CheckpointError(f"{index_path}: missing safetensors index")
    index = json.loads(index_path.read_text())
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(index["weight_map"].values())):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing")
        expected = index["metadata"].get("sha256", {}).get(name)
        if verify and expected and sha256_file(path) != expected:
            raise CheckpointError(f"{path}: sha256 does not match {INDEX_NAME} (corrupt or truncated)")
        state.update(load_file(str(path)))
    return state

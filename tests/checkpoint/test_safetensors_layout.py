"""Shards are laid out so that memory-mapped loads give aligned weights, and read back bitwise."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ringmoe.checkpoint.safetensors_io import ALIGNMENT, INDEX_NAME, iter_sharded, write_sharded
from ringmoe.core.files import sha256_file


def test_tensors_start_aligned_in_the_file_and_round_trip_bitwise(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    # Interleaved in name order: sizes that are multiples of ALIGNMENT and sizes that are not (a 3-element
    # bias, a scalar, per-head values), which would push every later tensor off alignment in name order.
    shapes = {"a.bias": (3,), "b.weight": (32, 16), "c.scale": (), "d.logit_scale": (2, 1, 1), "e.weight": (8, 8)}
    state = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    state["f.index"] = torch.arange(5, dtype=torch.int64)
    write_sharded(state, tmp_path, {"format": "pt"}, max_shard_bytes=2**20)

    shard = tmp_path / "model.safetensors"
    with safe_open(str(shard), framework="pt") as handle:
        loaded = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]) and tensor.dtype == state[name].dtype, name
        if tensor.numel() * tensor.element_size() % ALIGNMENT == 0:
            assert tensor.data_ptr() % ALIGNMENT == 0, name
    assert dict(iter_sharded(tmp_path)).keys() == state.keys()
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"]["sha256"]["model.safetensors"] == sha256_file(shard)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())

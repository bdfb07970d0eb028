"""Sharded safetensors in the HuggingFace layout: ``model-0000i-of-0000n.safetensors`` + index JSON with sha256.

``write_sharded`` takes a state dict in memory (shards filled in name order up to ``max_shard_bytes``).
``write_sharded_stream`` takes the tensors' names, dtypes and shapes first and then the tensors one at a time,
writing each straight to its shard file (the safetensors header is known from the specs), so memory holds one
tensor, not a shard or the model. Every shard is written to a temp file and renamed, its sha256 hashed while
writing.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, sha256_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def write_sharded(
    state: dict[str, torch.Tensor], out_dir: Path, metadata: dict[str, str], max_shard_bytes: int = 2 * 2**30
) -> list[Path]:
    """A state dict in memory, in name order (the same aligned layout as ``write_sharded_stream``)."""
    names = sorted(state)
    specs = [TensorSpec(n, state[n].dtype, tuple(state[n].shape)) for n in names]
    return write_sharded_stream(specs, ((n, state[n]) for n in names), out_dir, metadata, max_shard_bytes)


def read_sharded(directory: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The whole state dict in memory (small models and tests; ``iter_sharded`` streams)."""
    return dict(iter_sharded(directory, verify))


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


_TORCH_DTYPES = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def _shard_plan(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


# Tensor data starts at multiples of this in the file, so a memory-mapped load (safetensors, transformers) hands the
# model weights as aligned as PyTorch's own allocations: BLAS kernels pick other code paths for unaligned
# operands, and a model loaded from an unaligned file computed features 1 ulp away from the same weights
# in allocated memory on some CPUs.
ALIGNMENT = 64


def _file_order(specs: list[TensorSpec]) -> list[TensorSpec]:
    """The tensors' order in the file. safetensors allows no gaps between tensors, so alignment comes from the
    order: every tensor whose size is a multiple of ``ALIGNMENT`` first (all of them start aligned), then the
    few others (scalars, per-head values)."""
    return [s for s in specs if s.nbytes % ALIGNMENT == 0] + [s for s in specs if s.nbytes % ALIGNMENT]


def _header(file_order: list[TensorSpec], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """The header bytes and each tensor's file position."""
    entries: dict[str, object] = {"__metadata__": metadata}
    offsets, offset = {}, 0
    for spec in file_order:
        entries[spec.name] = {
            "dtype": _SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offsets[spec.name] = offset
        offset += spec.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % ALIGNMENT)  # trailing spaces are valid header padding
    data_start = 8 + len(header)
    return struct.pack("<Q", len(header)) + header, {name: data_start + o for name, o in offsets.items()}


def write_sharded_stream(
    specs: list[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    out_dir: Path,
    metadata: dict[str, str],
    max_shard_bytes: int = 2 * 2**30,
) -> list[Path]:
    """``tensors`` must yield ``(name, tensor)`` in the order of ``specs``, each of the spec's dtype and shape.
    Each is written at its aligned place in the shard as it arrives (see ``_file_order``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _shard_plan(specs, max_shard_bytes)
    single = len(plan) == 1
    stream: Iterator[tuple[str, torch.Tensor]] = iter(tensors)
    written, weight_map, checksums = [], {}, {}
    for index, shard in enumerate(plan, start=1):
        name = SINGLE_NAME if single else f"model-{index:05d}-of-{len(plan):05d}.safetensors"
        path, tmp = out_dir / name, out_dir / f".{name}.tmp"
        header, positions = _header(_file_order(shard), metadata)
        with open(tmp, "wb") as handle:
            handle.write(header)
            for spec in shard:
                got, tensor = next(stream)
                if got != spec.name or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                    raise CheckpointError(
                        f"{name}: expected {spec.name} {spec.dtype} {spec.shape}, got {got} {tensor.dtype} "
                        f"{tuple(tensor.shape)}"
                    )
                handle.seek(positions[spec.name])
                handle.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
            handle.flush()
            os.fsync(handle.fileno())
        checksums[name] = sha256_file(tmp)  # written out of order: hashed once complete
        tmp.replace(path)
        weight_map.update({spec.name: name for spec in shard})
        written.append(path)
    atomic_write_json(
        out_dir / INDEX_NAME,
        {
            "metadata": {"total_size": sum(s.nbytes for s in specs), "sha256": checksums, **metadata},
            "weight_map": weight_map,
        },
    )
    return written


def parse_size(text: str) -> int:
    """``"2GB"``, ``"500MB"``, ``"1.5GiB"`` -> bytes (HuggingFace's ``max_shard_size`` convention)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B\s*", text, flags=re.I)
    if not match:
        raise CheckpointError(f"size {text!r}: expected a number and a unit, e.g. 2GB or 500MB")
    number, prefix, binary = match.groups()
    power = "KMGT".index(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def iter_sharded(directory: Path, verify: bool = True, keep=None) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of a sharded directory one at a time (``keep(name)`` filters), each shard verified against the
    index's sha256 before it is read; memory holds one tensor."""
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        raise CheckpointError(f"{index_path}: missing safetensors index")
    index = json.loads(index_path.read_text())
    for name in sorted(set(index["weight_map"].values())):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing")
        expected = index["metadata"].get("sha256", {}).get(name)
        if verify and expected and sha256_file(path) != expected:
            raise CheckpointError(f"{path}: sha256 does not match {INDEX_NAME} (corrupt or truncated)")
        with safe_open(str(path), framework="pt") as shard:
            for tensor_name in shard.keys():
                if keep is None or keep(tensor_name):
                    yield tensor_name, shard.get_tensor(tensor_name)


def sharded_specs(directory: Path, keep=None) -> list[TensorSpec]:
    """Names, dtypes and shapes of a sharded directory's tensors, from the shard headers only."""
    index = json.loads((directory / INDEX_NAME).read_text())
    specs = []
    for name in sorted(set(index["weight_map"].values())):
        with safe_open(str(directory / name), framework="pt") as shard:
            for tensor_name in shard.keys():
                if keep is None or keep(tensor_name):
                    sliced = shard.get_slice(tensor_name)
                    dtype = _TORCH_DTYPES[sliced.get_dtype()]
                    specs.append(TensorSpec(tensor_name, dtype, tuple(sliced.get_shape())))
    return specs

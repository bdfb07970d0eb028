"""DeepSpeed MoE checkpoint (any EP or TP size, ZeRO 0-2) -> one safetensors state dict of the single-device model.

DeepSpeed's own ``zero_to_fp32.py`` cannot read MoE checkpoints. Here the non-expert weights come from
``mp_rank_<T>_model_states.pt`` and each expert from its ``layer_<L>_expert_<E>_mp_rank_<T>_model_states.pt``
(DeepSpeed already stores global expert indices in those keys), one file per tensor-parallel rank T; TP slices
are put back where ``parallel.tp_layout`` says each rank's slice came from. Every file is loaded with
``weights_only=True`` and the result is checked, name by name and shape by shape, against the model the
checkpoint says it holds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ringmoe.checkpoint.safetensors_io import TensorSpec, write_sharded_stream
from ringmoe.checkpoint.save import META_NAME, read_meta
from ringmoe.config.schema import ModelConfig
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json
from ringmoe.core.structured import from_dict, to_dict
from ringmoe.parallel.moe_keys import is_expert_key, to_single_device_key
from ringmoe.parallel.tp_layout import Shard, model_shards
from ringmoe.recipes.registry import build_pretraining_model

log = logging.getLogger(__name__)
MODEL_CONFIG_NAME = "ringmoe_model.json"
MAIN_FILE = "mp_rank_00_model_states.pt"
MAIN_FILE_PATTERN = re.compile(r"^mp_rank_\d+_model_states\.pt$")
EXPERT_FILE = re.compile(r"layer_(\d+)_expert_(\d+)_mp_rank_(\d+)_model_states\.pt$")


def load_checkpoint_file(path: Path, mmap: bool = False) -> dict:
    """``mmap``: tensors stay in the file's pages until read, so opening a file costs no memory."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for truncated/corrupt zip archives
        raise CheckpointError(f"{path}: cannot read checkpoint file ({type(exc).__name__}: {exc})") from None


def meta_model(model_config: ModelConfig):
    with torch.device("meta"):
        return build_pretraining_model(model_config)


def expected_state(model_config: ModelConfig) -> dict[str, torch.Size]:
    """Names and shapes of the single-device model, built on the meta device (no memory for weights)."""
    return {name: tensor.shape for name, tensor in meta_model(model_config).state_dict().items()}


def main_file(tp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_model_states.pt"


@dataclass
class CheckpointSource:
    """Where every tensor of a DeepSpeed MoE checkpoint lives. ``files``: groups of files holding the same
    tensors, one per tensor-parallel rank (one file when TP is 1), with DeepSpeed key -> single-device name;
    ``shards``: per TP rank, the slice each tensor-parallel tensor holds (``parallel.tp_layout``)."""

    tag_dir: Path
    model_config: ModelConfig
    files: list[tuple[list[Path], dict[str, str]]]
    specs: list[TensorSpec]  # in reading order, single-device shapes
    shards: list[dict[str, Shard]]

    def tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor once in single-device form, one file group open at a time (memory-mapped), TP slices
        put together, cast to ``dtype`` when floating."""
        shapes = {spec.name: spec.shape for spec in self.specs}
        for paths, names in tqdm(self.files, desc="consolidate", unit="file", disable=len(self.files) < 50):
            states = [_module_states(path, load_checkpoint_file(path, mmap=True)) for path in paths]
            for key, name in names.items():
                if name in self.shards[0]:
                    tensor = states[0][key].new_empty(shapes[name])
                    for rank, state in enumerate(states):
                        shard = self.shards[rank][name]
                        tensor.index_copy_(shard.dim, shard.index, state[key])
                else:
                    tensor = states[0][key]  # replicated on every TP rank
                yield name, tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
            del states


def _module_states(path: Path, loaded: dict) -> dict[str, torch.Tensor]:
    if MAIN_FILE_PATTERN.match(path.name):
        module = loaded.get("module")
        if not isinstance(module, dict):
            raise CheckpointError(f"{path}: has no 'module' state dict")
        return module
    return loaded


def _file_groups(tag_dir: Path, tp: int) -> list[list[Path]]:
    """[main files], then per expert [its files]: each group ordered by TP rank, every rank's file present."""
    groups = [[tag_dir / main_file(rank) for rank in range(tp)]]
    experts: dict[tuple[int, int], dict[int, Path]] = {}
    for path in tag_dir.iterdir():
        match = EXPERT_FILE.match(path.name)
        if match:
            layer, expert, rank = (int(v) for v in match.groups())
            experts.setdefault((layer, expert), {})[rank] = path
    for (layer, expert), by_rank in sorted(experts.items()):
        missing = sorted(set(range(tp)) - set(by_rank))
        if missing or len(by_rank) != tp:
            raise CheckpointError(
                f"{tag_dir}: layer {layer} expert {expert}: files for TP ranks {sorted(by_rank)}, expected 0..{tp - 1}"
            )
        groups.append([by_rank[rank] for rank in range(tp)])
    for path in groups[0]:
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (non-expert model states)")
    return groups


def read_checkpoint_layout(tag_dir: Path) -> CheckpointSource:
    """Plan a read of ``tag_dir`` and check it against the model its meta names, before any data is read:
    a missing expert or TP-rank file, an unexpected tensor or a wrong shape (or TP slice) is a
    ``CheckpointError`` naming the file."""
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: checkpoint directory not found")
    meta = read_meta(tag_dir)
    tp = int(meta.get("tensor_parallel_size", 1))
    model_config = from_dict(ModelConfig, meta["model"], str(tag_dir / META_NAME))
    model = meta_model(model_config)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    shards = [model_shards(model, tp, rank) if tp > 1 else {} for rank in range(tp)]
    files, specs, seen = [], [], {}
    for index, paths in enumerate(_file_groups(tag_dir, tp)):
        states = [_module_states(path, load_checkpoint_file(path, mmap=True)) for path in paths]
        names = {}
        for key, tensor in states[0].items():
            if index == 0 and is_expert_key(key):
                continue  # DeepSpeed keeps its local experts here too; the per-expert files are the full set
            name = to_single_device_key(key)
            if name in seen:
                raise CheckpointError(f"{paths[0]}: {name} is also in {seen[name]}")
            for rank, state in enumerate(states):
                _check_piece(paths[rank], name, state.get(key), expected.get(name), shards[rank].get(name))
            seen[name] = paths[0].name
            names[key] = name
            specs.append(TensorSpec(name, tensor.dtype, tuple(expected.get(name, tensor.shape))))
        files.append((paths, names))
        del states
    _check_complete(set(seen), expected, tag_dir)
    return CheckpointSource(tag_dir, model_config, files, specs, shards)


def _check_piece(path: Path, name: str, piece, full, shard: Shard | None) -> None:
    if piece is None:
        raise CheckpointError(f"{path}: {name} is missing (present in TP rank 0's file)")
    if full is None:
        return  # unexpected: reported by _check_complete with the others
    want = list(full)
    if shard is not None:
        want[shard.dim] = len(shard.index)
    if list(piece.shape) != want:
        what = f"TP slice of {tuple(full)}" if shard is not None else "the model expects"
        raise CheckpointError(f"{path}: {name} has shape {tuple(piece.shape)}, {what} {tuple(want)}")


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


def read_model_config(directory: Path) -> ModelConfig:
    """The model config of a directory written by ``consolidate`` (or ``ringmoe prune``)."""
    import json

    path = directory / MODEL_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; pass a directory written by `ringmoe consolidate` or `ringmoe prune`")
    try:
        return from_dict(ModelConfig, json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def load_consolidated_model(directory: Path) -> tuple[torch.nn.Module, ModelConfig]:
    """The single-device model with a consolidated directory's weights (every shard checked against its sha256).
    Built on the meta device and filled in place, so the weights are in memory once."""
    from ringmoe.checkpoint.safetensors_io import iter_sharded

    config = read_model_config(directory)
    model = meta_model(config)
    state = dict(iter_sharded(directory))
    mismatch = state_mismatch(
        {n: t.shape for n, t in state.items()}, {n: t.shape for n, t in model.state_dict().items()}
    )
    if mismatch:
        raise CheckpointError(f"{directory}: tensors do not match {MODEL_CONFIG_NAME}: {mismatch}")
    model.load_state_dict(state, assign=True)
    return model, config


def state_mismatch(shapes: dict[str, tuple], expected: dict[str, tuple]) -> str:
    """How tensor names and shapes differ from what a model expects ("" when they agree), a few of each kind."""
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = sorted(n for n in set(shapes) & set(expected) if tuple(shapes[n]) != tuple(expected[n]))
    if not (missing or extra or wrong):
        return ""
    return f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}"

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
from pathlib import Path

import torch
from tqdm import tqdm

from ringmoe.checkpoint.safetensors_io import write_sharded
from ringmoe.checkpoint.save import META_NAME
from ringmoe.config.schema import ModelConfig
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json
from ringmoe.core.structured import from_dict, to_dict
from ringmoe.models.build import build_model
from ringmoe.parallel.moe_keys import is_expert_key, to_single_device_key

log = logging.getLogger(__name__)
MODEL_CONFIG_NAME = "ringmoe_model.json"
EXPERT_FILE = re.compile(r"layer_(\d+)_expert_(\d+)_mp_rank_(\d+)_model_states\.pt$")


def read_meta(tag_dir: Path) -> dict:
    path = tag_dir / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: no {META_NAME}; the checkpoint is incomplete or not a ringmoe checkpoint")
    return json.loads(path.read_text())


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt zip archives
        raise CheckpointError(f"{path}: cannot read checkpoint file ({type(exc).__name__}: {exc})") from None


def expected_state(model_config: ModelConfig) -> dict[str, torch.Size]:
    """Names and shapes of the single-device model, built on the meta device (no memory for weights)."""
    with torch.device("meta"):
        model = build_model(model_config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def read_deepspeed_checkpoint(tag_dir: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    meta = read_meta(tag_dir)
    if meta.get("tensor_parallel_size", 1) != 1:
        raise CheckpointError(
            f"{tag_dir}: tensor-parallel checkpoints are not supported yet (TP={meta['tensor_parallel_size']})"
        )
    model_config = from_dict(ModelConfig, meta["model"], str(tag_dir / META_NAME))
    main_file = tag_dir / "mp_rank_00_model_states.pt"
    if not main_file.is_file():
        raise CheckpointError(f"{main_file}: missing (non-expert model states)")
    state: dict[str, torch.Tensor] = {}
    module = _load(main_file).get("module")
    if not isinstance(module, dict):
        raise CheckpointError(f"{main_file}: has no 'module' state dict")
    for key, tensor in module.items():
        if not is_expert_key(key):
            state[to_single_device_key(key)] = tensor
    expert_files = sorted(p for p in tag_dir.iterdir() if EXPERT_FILE.match(p.name))
    for path in tqdm(expert_files, desc="experts", unit="file", disable=len(expert_files) < 50):
        for key, tensor in _load(path).items():
            state[to_single_device_key(key)] = tensor
    _check_complete(state, expected_state(model_config), tag_dir)
    return state, model_config


def _check_complete(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: Path) -> None:
    missing = sorted(set(expected) - set(state))
    if missing:
        experts = [k for k in missing if ".experts." in k]
        hint = " (an expert file layer_*_expert_*_model_states.pt is missing)" if experts else ""
        raise CheckpointError(f"{where}: {len(missing)} tensors missing{hint}, e.g. {missing[:3]}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{where}: {len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise CheckpointError(f"{where}: {name} has shape {tuple(state[name].shape)}, model expects {tuple(shape)}")


def consolidate(tag_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: checkpoint directory not found")
    state, model_config = read_deepspeed_checkpoint(tag_dir)
    state = {n: (t.to(dtype) if t.is_floating_point() else t).contiguous() for n, t in state.items()}
    write_sharded(state, out_dir, metadata={"source": str(tag_dir.name), "format": "ringmoe-consolidated"})
    atomic_write_json(out_dir / MODEL_CONFIG_NAME, to_dict(model_config))
    log.info("consolidated %d tensors from %s into %s", len(state), tag_dir, out_dir)
    return out_dir

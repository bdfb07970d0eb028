"""Write a HuggingFace directory for a pretrained encoder: config.json, safetensors, and the modeling code.

RingMoE exports its encoder (``encoder.*``); the SkySense recipe exports its EMA teacher's encoder
(``teacher.*``, renamed ``encoder.*``) as model type ``skysense``.

The modeling code is the training code: ``ringmoe/models`` files (and the batch type they use) are copied next
to ``config.json`` with absolute ``ringmoe.*`` imports rewritten to relative ones, so
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` needs nothing but torch and transformers.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME
from ringmoe.checkpoint.safetensors_io import (
    INDEX_NAME,
    TensorSpec,
    iter_sharded,
    parse_size,
    sharded_specs,
    write_sharded_stream,
)
from ringmoe.config.schema import ModelConfig
from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, atomic_write_text
from ringmoe.core.sensors import load_registry
from ringmoe.core.structured import from_dict

_PACKAGE = Path(__file__).resolve().parents[1]
# Module -> file name in the export; order matters only for readability.
_COPIED_MODULES = {
    "ringmoe.core.modalities": "ringmoe_modalities",
    "ringmoe.core.batch": "ringmoe_batch",
    "ringmoe.models.moe": "ringmoe_moe",
    "ringmoe.models.swin": "ringmoe_swin",
    "ringmoe.models.encoder": "ringmoe_encoder",
    "ringmoe.models.skysense": "ringmoe_skysense",
}
_ENCODER_KEYS = [
    "img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "in_chans",
    "modal_experts", "collab_experts", "shared_expert", "shared_expert_multiple", "capacity_factor", "min_capacity",
]  # fmt: skip


def _module_source(module: str) -> str:
    path = _PACKAGE.parent / (module.replace(".", "/") + ".py")
    source = path.read_text()
    for name, exported in _COPIED_MODULES.items():
        source = re.sub(rf"^from {re.escape(name)} import", f"from .{exported} import", source, flags=re.M)
    leftover = re.findall(r"^(?:from|import) ringmoe\b.*$", source, flags=re.M)
    if leftover:
        raise RuntimeError(f"{path}: imports outside the exported modules: {leftover}")
    return source


def _sensor_table() -> dict:
    return {name: dataclasses.asdict(spec) for name, spec in load_registry().items()}


def hf_config(model_config: ModelConfig) -> dict:
    if model_config.recipe == "skysense":
        from ringmoe.recipes.build import skysense_encoder_kwargs

        return {
            "model_type": "skysense",
            "architectures": ["SkySenseModel"],
            "auto_map": {
                "AutoConfig": "configuration_skysense.SkySenseConfig",
                "AutoModel": "modeling_skysense.SkySenseModel",
            },
            "encoder": skysense_encoder_kwargs(model_config),
            "sensors": _sensor_table(),
        }
    encoder = dataclasses.asdict(model_config)
    return {
        "model_type": "ringmoe",
        "architectures": ["RingMoEModel"],
        "auto_map": {
            "AutoConfig": "configuration_ringmoe.RingMoEConfig",
            "AutoModel": "modeling_ringmoe.RingMoEModel",
        },
        **{key: encoder[key] for key in _ENCODER_KEYS},
        "sensors": _sensor_table(),
    }


def exported_prefix(model_config: ModelConfig) -> str:
    """The consolidated tensors that form the released encoder (the rest is pretraining scaffolding)."""
    return "teacher." if model_config.recipe == "skysense" else "encoder."


def export_huggingface(consolidated: Path, out_dir: Path, dtype: str = "float32", max_shard_size: str = "2GB") -> Path:
    """Stream the encoder tensors of a consolidated checkpoint into HuggingFace safetensors shards
    (``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``)."""
    config_path = consolidated / MODEL_CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; pass a directory written by `ringmoe consolidate`")
    model_config = from_dict(ModelConfig, json.loads(config_path.read_text()), str(config_path))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    prefix = exported_prefix(model_config)

    def encoder_only(name: str) -> bool:
        return name.startswith(prefix)

    def renamed(name: str) -> str:
        return "encoder." + name.removeprefix(prefix)

    specs = [
        TensorSpec(renamed(s.name), torch_dtype if s.dtype.is_floating_point else s.dtype, s.shape)
        for s in sharded_specs(consolidated, encoder_only)
    ]
    if not specs:
        raise CheckpointError(f"{consolidated}: no {prefix}* tensors found")
    tensors = (
        (renamed(name), t.to(torch_dtype) if t.is_floating_point() else t)
        for name, t in iter_sharded(consolidated, keep=encoder_only)
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("model*.safetensors"), out_dir / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    written = write_sharded_stream(specs, tensors, out_dir, {"format": "pt"}, parse_size(max_shard_size))
    checksums = json.loads((out_dir / INDEX_NAME).read_text())["metadata"]["sha256"]
    if len(written) == 1:
        (out_dir / INDEX_NAME).unlink()  # one file: HuggingFace loads model.safetensors without an index
    config = hf_config(model_config)
    for module, exported in _COPIED_MODULES.items():
        atomic_write_text(out_dir / f"{exported}.py", _module_source(module))
    for template in (Path(__file__).parent / "hf_code").glob(f"*_{config['model_type']}.py.in"):
        atomic_write_text(out_dir / template.name[: -len(".in")], template.read_text())
    config["torch_dtype"] = dtype
    atomic_write_json(out_dir / "config.json", config)
    atomic_write_json(out_dir / "checksums.json", checksums)
    atomic_write_text(out_dir / "README.md", _model_card(model_config, config["sensors"]))
    return out_dir


def _model_card(model_config: ModelConfig, sensors: dict) -> str:
    first = next(iter(model_config.in_chans))
    size = f"{model_config.img_size}, {model_config.img_size}"
    if model_config.recipe == "skysense":
        title = "SkySense spatiotemporal encoder"
        summary = (
            "A RingMoE spatial encoder per modality and a multi-modal temporal fusion transformer, pretrained with "
            "multi-granularity contrastive learning and geo-context prototypes (the EMA teacher's weights)."
        )
        shape = f"(B, T, C, {size}) (dates on axis 1; `present` and `days` optional)"
    else:
        title = "RingMoE encoder"
        summary = "SwinV2-shaped hierarchical mixture-of-experts encoder pretrained with per-modality SimMIM."
        shape = f"(B, C, {size})"
    rows = "\n".join(
        f"| {name} | {spec['modality']} | {', '.join(spec['modality_bands'])} | {spec['normalization']['kind']} "
        f"(scale {spec['normalization']['scale']:.3g}, clip {spec['normalization']['clip']}) |"
        for name, spec in sorted(sensors.items())
    )
    return f"""---
library_name: transformers
tags: [remote-sensing, mixture-of-experts, ringmoe]
---
# {title} ({model_config.name})

{summary}
Load with `AutoModel.from_pretrained(path, trust_remote_code=True)` and call
`model(pixel_values={{"{first}": x}})` with `x` of shape {shape}.

Input channels per modality: {dict(model_config.in_chans)}.

## Sensors and normalization used in pretraining

| source | modality | bands (channel order) | normalization |
|---|---|---|---|
{rows}

Normalization is also stored under `sensors` in `config.json`; apply the same to new imagery.
"""

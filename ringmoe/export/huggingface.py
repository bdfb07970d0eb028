"""Write a HuggingFace directory for a pretrained encoder: config.json, safetensors, and the modeling code.

The model config's recipe (``ringmoe.recipes.registry``) says which tensors form the released encoder
(RingMoE: ``encoder.*``; SkySense: its EMA teacher, ``teacher.*``, renamed ``encoder.*``), its model type, its
``config.json`` entries and where its configuration/modeling templates are.

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
from ringmoe.recipes.registry import HFRelease, Recipe, recipe_of

_PACKAGE = Path(__file__).resolve().parents[1]
# Module -> file name in the export; order matters only for readability.
_COPIED_MODULES = {
    "ringmoe.core.modalities": "ringmoe_modalities",
    "ringmoe.core.encoder_config": "ringmoe_encoder_config",
    "ringmoe.core.batch": "ringmoe_batch",
    "ringmoe.models.moe": "ringmoe_moe",
    "ringmoe.models.swin": "ringmoe_swin",
    "ringmoe.models.encoder": "ringmoe_encoder",
    "ringmoe.models.skysense": "ringmoe_skysense",
}


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
    recipe = recipe_of(model_config)
    release = _release(recipe, model_config)
    return {
        "model_type": release.model_type,
        "architectures": [release.architecture],
        "auto_map": {
            "AutoConfig": f"configuration_{release.model_type}.{release.config_class}",
            "AutoModel": f"modeling_{release.model_type}.{release.architecture}",
        },
        **recipe.hf_config(model_config),
        "sensors": _sensor_table(),
    }


def _release(recipe: Recipe, model_config: ModelConfig) -> HFRelease:
    if recipe.hf is None:
        raise CheckpointError(f"model.recipe {model_config.recipe!r} declares no HuggingFace release (Recipe.hf)")
    return recipe.hf


def export_huggingface(consolidated: Path, out_dir: Path, dtype: str = "float32", max_shard_size: str = "2GB") -> Path:
    """Stream the encoder tensors of a consolidated checkpoint into HuggingFace safetensors shards
    (``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``)."""
    config_path = consolidated / MODEL_CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; pass a directory written by `ringmoe consolidate`")
    model_config = from_dict(ModelConfig, json.loads(config_path.read_text()), str(config_path))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    recipe = recipe_of(model_config)
    release = _release(recipe, model_config)
    prefix = recipe.released_prefix

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
    for template in release.code.glob(f"*_{release.model_type}.py.in"):
        atomic_write_text(out_dir / template.name[: -len(".in")], template.read_text())
    config["torch_dtype"] = dtype
    atomic_write_json(out_dir / "config.json", config)
    atomic_write_json(out_dir / "checksums.json", checksums)
    atomic_write_text(out_dir / "README.md", _model_card(model_config, release, config["sensors"]))
    return out_dir


def _model_card(model_config: ModelConfig, release: HFRelease, sensors: dict) -> str:
    first = next(iter(model_config.in_chans))
    title, summary = release.title, release.summary
    shape = release.input_shape.format(size=f"{model_config.img_size}, {model_config.img_size}")
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

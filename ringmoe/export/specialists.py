"""HuggingFace exports of the Ensemble-of-Specialists recipe.

Each specialist becomes a native ``transformers`` ``ConvNextV2Model`` directory (no remote code: our ConvNeXt V2
has the same structure, only the names differ), with its registry record in ``config.json``. The combiner is a
``trust_remote_code`` model whose code is the training code. Directories are written beside their target and
renamed into place.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_json, atomic_write_text
from ringmoe.models.convnextv2 import VARIANTS, feature_width
from ringmoe.recipes.eos.registry import SpecialistRegistry

_PACKAGE = Path(__file__).resolve().parents[1]


def hf_convnextv2_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ConvNeXt V2 names and shapes -> ``transformers``' ``ConvNextV2Model`` (the ImageNet-style head, if
    any, is left out)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("head."):
            continue
        new = re.sub(r"^stem\.0\.", "embeddings.patch_embeddings.", name)
        new = re.sub(r"^stem\.1\.", "embeddings.layernorm.", new)
        new = re.sub(
            r"^downsamples\.(\d+)\.", lambda m: f"encoder.stages.{int(m.group(1)) + 1}.downsampling_layer.", new
        )
        new = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"encoder.stages.\1.layers.\2.", new)
        new = (
            new.replace(".norm.", ".layernorm.").replace(".grn.gamma", ".grn.weight").replace(".grn.beta", ".grn.bias")
        )
        new = re.sub(r"^norm\.", "layernorm.", new)
        out[new] = tensor.reshape(1, 1, 1, -1) if ".grn." in new else tensor
    return out


def _replace_dir(tmp: Path, out_dir: Path) -> Path:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def export_specialist(registry_dir: Path, name: str, out_dir: Path) -> Path:
    from transformers import ConvNextV2Config, ConvNextV2Model

    registry = SpecialistRegistry(registry_dir)
    model = registry.load(name)  # checksum verified
    record = registry.records[name]
    depths, dims = VARIANTS[record.variant]
    config = ConvNextV2Config(
        num_channels=record.in_chans, depths=list(depths), hidden_sizes=list(dims), layer_norm_eps=1e-6
    )
    config.specialist = dataclasses.asdict(record)  # sensor, modality, task, sha256 of the registry file
    hf = ConvNextV2Model(config)
    missing, unexpected = hf.load_state_dict(hf_convnextv2_state(model.state_dict()), strict=False)
    if unexpected or [k for k in missing if not k.startswith("pooler")]:
        raise CheckpointError(f"{registry_dir / name}: does not map onto ConvNextV2Model ({missing or unexpected})")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp, safe_serialization=True)
    return _replace_dir(tmp, out_dir)


def export_combiner(combiner_file: Path, feature_dims: dict[str, int], dim: int, heads: int, num_classes: int,
                    specialists: dict[str, dict], out_dir: Path) -> Path:  # fmt: skip
    from safetensors.torch import save_file

    state = {f"combiner.{k}": v for k, v in load_file(combiner_file).items()}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    source = (_PACKAGE / "recipes" / "eos" / "combiner.py").read_text()
    if re.search(r"^(from|import) ringmoe\b", source, flags=re.M):
        raise RuntimeError("the combiner module must not import ringmoe: it is copied into the export")
    atomic_write_text(tmp / "eos_combiner.py", source)
    for template in ("configuration_eoscombiner.py.in", "modeling_eoscombiner.py.in"):
        atomic_write_text(tmp / template[: -len(".in")], (Path(__file__).parent / "hf_code" / template).read_text())
    atomic_write_json(tmp / "config.json", {
        "model_type": "eoscombiner", "architectures": ["EoSCombinerModel"],
        "auto_map": {"AutoConfig": "configuration_eoscombiner.EoSCombinerConfig",
                     "AutoModel": "modeling_eoscombiner.EoSCombinerModel"},
        "feature_dims": feature_dims, "dim": dim, "heads": heads, "num_classes": num_classes,
        "specialists": specialists,
    })  # fmt: skip
    return _replace_dir(tmp, out_dir)


def export_federation(federation_dir: Path, out_dir: Path, dim: int, heads: int = 4, num_classes: int = 1) -> Path:
    """Every client's specialist (``<out>/<specialist>``) and the combiner (``<out>/combiner``) of a
    ``ringmoe federated`` output directory."""
    records = {}
    for registry_dir in sorted((federation_dir / "clients").glob("*/specialists")):
        for name, record in SpecialistRegistry(registry_dir).records.items():
            export_specialist(registry_dir, name, out_dir / name)
            records[name] = dataclasses.asdict(record)
    if not records:
        raise CheckpointError(f"{federation_dir}: no clients/*/specialists registry found")
    feature_dims = {name: feature_width(r["variant"]) for name, r in records.items()}
    combiner = federation_dir / "combiner.safetensors"
    if not combiner.is_file():
        raise CheckpointError(f"{combiner}: missing; run `ringmoe federated` first")
    export_combiner(combiner, feature_dims, dim, heads, num_classes, records, out_dir / "combiner")
    return out_dir

"""The specialist registry: a folder with ``registry.json`` and one ``<name>.safetensors`` per specialist.

A record names the specialist's sensor, modality, task, ConvNeXt V2 variant, input channels, parameter count
and the sha256 of its weights file. Adding a specialist writes only its own file and record (both atomically);
loading checks the checksum first, so a specialist that changed on disk is an error, never silently used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ringmoe.core.errors import CheckpointError
from ringmoe.core.files import atomic_write_bytes, atomic_write_json, sha256_file
from ringmoe.models.convnextv2 import ConvNeXtV2, convnextv2
from ringmoe.models.ema import freeze_parameters

REGISTRY_NAME = "registry.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SpecialistRecord:
    name: str
    sensor: str
    modality: str
    task: str  # e.g. "masked-modelling", "land-cover"
    variant: str  # ConvNeXt V2 size: atto, femto, pico, ...
    in_chans: int
    parameters: int
    sha256: str


class SpecialistRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records: dict[str, SpecialistRecord] = {}
        path = self.root / REGISTRY_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("format_version") != FORMAT_VERSION:
                    raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
                self.records = {r["name"]: SpecialistRecord(**r) for r in data["specialists"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{path}: not a specialist registry ({exc})") from None

    def add(
        self, name: str, model: ConvNeXtV2, sensor: str, modality: str, task: str, variant: str
    ) -> SpecialistRecord:
        """Store ``model``'s weights as a new specialist; an existing name is an error (specialists are frozen)."""
        if name in self.records:
            raise CheckpointError(f"{self.root}: specialist {name!r} exists; specialists are never overwritten")
        self.root.mkdir(parents=True, exist_ok=True)
        weights = self.root / f"{name}.safetensors"
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        atomic_write_bytes(weights, save(state, metadata={"specialist": name, "variant": variant}))
        record = SpecialistRecord(
            name, sensor, modality, task, variant, model.stem[0].in_channels,
            sum(p.numel() for p in model.parameters()), sha256_file(weights),
        )  # fmt: skip
        self.records[name] = record
        self._write()
        return record

    def load(self, name: str) -> ConvNeXtV2:
        """The specialist, checksum verified, frozen (eval mode, no gradients)."""
        if name not in self.records:
            raise CheckpointError(f"{self.root}: no specialist {name!r} (have {sorted(self.records)})")
        record = self.records[name]
        weights = self.root / f"{name}.safetensors"
        if not weights.is_file() or sha256_file(weights) != record.sha256:
            raise CheckpointError(f"{weights}: missing or its sha256 differs from {REGISTRY_NAME}; refusing to use it")
        model = convnextv2(record.variant, record.in_chans)
        model.load_state_dict(load_file(weights))
        return freeze(model)

    def checksums(self) -> dict[str, str]:
        return {name: sha256_file(self.root / f"{name}.safetensors") for name in self.records}

    def _write(self) -> None:
        atomic_write_json(
            self.root / REGISTRY_NAME,
            {"format_version": FORMAT_VERSION, "specialists": [asdict(r) for r in self.records.values()]},
        )


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    return freeze_parameters(model)

"""Ensemble-of-Specialists exports as evaluation encoders (``ringmoe export-eos`` output):

- ``specialist:<dir>``: one specialist (a ``transformers`` ``ConvNextV2Model``), its stage maps;
- ``ensemble:<export dir>[@drop,drop]``: the combiner's representation over every exported specialist that
  takes the image's modality and channels, optionally without the named specialists (a pruned ensemble). Image
  tasks get the combiner on the pooled features; dense tasks also get the specialists' finer stage maps and the
  combiner at every position of their coarsest maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ringmoe.core.errors import CheckpointError
from ringmoe.eval.encoder import EncoderUnavailable, FrozenEncoder

INPUT_SIZE = 64  # the federation's default input size; specialists are fully convolutional


class _Specialist(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, modality: str) -> list[torch.Tensor]:
        return list(self.model(pixel_values=images, output_hidden_states=True).hidden_states[1:])


def _load_specialist(path: Path):
    from transformers import ConvNextV2Model

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not an exported specialist (no config.json)")
    model = ConvNextV2Model.from_pretrained(str(path)).eval()
    record = getattr(model.config, "specialist", None)
    if not record:
        raise CheckpointError(f"{path}: config.json has no specialist record; export it with `ringmoe export-eos`")
    return model, record


class _Ensemble(nn.Module):
    def __init__(self, specialists: dict[str, tuple[nn.Module, dict]], combiner: nn.Module) -> None:
        super().__init__()
        self.records = {name: record for name, (_, record) in specialists.items()}
        self.specialists = nn.ModuleDict({name: model for name, (model, _) in specialists.items()})
        self.combiner = combiner

    def forward(self, images: torch.Tensor, modality: str) -> list[torch.Tensor]:
        names = [n for n, r in self.records.items() if r["modality"] == modality and r["in_chans"] == images.shape[1]]
        if not names:
            raise EncoderUnavailable(f"no specialist of this ensemble takes {modality} with {images.shape[1]} channels")
        outputs = {n: self.specialists[n](pixel_values=images, output_hidden_states=True) for n in names}
        combiner = self.combiner.combiner
        pooled, _ = combiner.represent({n: out.pooler_output for n, out in outputs.items()})
        # Dense tasks: the specialists' finer stage maps side by side, and at the coarsest stage the combiner
        # applied at every position (each position's features normalized like the pooled ones it was trained on).
        finer = [torch.cat([out.hidden_states[s] for out in outputs.values()], dim=1) for s in range(1, 4)]
        batch, _, height, width = next(iter(outputs.values())).last_hidden_state.shape
        positions = {
            n: self.specialists[n].layernorm(out.last_hidden_state.permute(0, 2, 3, 1).flatten(0, 2))
            for n, out in outputs.items()
        }
        dense, _ = combiner.represent(positions)
        dense = dense.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        return [*finer, dense, pooled[:, :, None, None]]  # the last, pooled, is what image-level tasks use


def load_ensemble_encoder(text: str) -> FrozenEncoder:
    from transformers import AutoModel

    if text.startswith("specialist:"):
        path = Path(text.removeprefix("specialist:"))
        model, record = _load_specialist(path)
        return FrozenEncoder(f"specialist {path.name}", [record["modality"]], _Specialist(model), INPUT_SIZE, "images")
    spec, _, drop = text.removeprefix("ensemble:").partition("@")
    root, dropped = Path(spec), [d for d in drop.split(",") if d]
    combiner_dir = root / "combiner"
    if not (combiner_dir / "config.json").is_file():
        raise CheckpointError(f"{root}: not an ensemble export (no combiner/config.json)")
    exported = json.loads((combiner_dir / "config.json").read_text())["specialists"]
    names = [n for n in exported if n not in dropped]
    unknown = sorted(set(dropped) - set(exported))
    if unknown or not names:
        raise CheckpointError(f"{root}: cannot drop {dropped} (unknown {unknown}, or nothing left)")
    specialists = {n: _load_specialist(root / n) for n in names}
    combiner = AutoModel.from_pretrained(str(combiner_dir), trust_remote_code=True).eval()
    label = f"ensemble {root.name}" + (f" without {', '.join(dropped)}" if dropped else "")
    modalities = sorted({record["modality"] for _, record in specialists.values()})
    return FrozenEncoder(label, modalities, _Ensemble(specialists, combiner), INPUT_SIZE, "images")

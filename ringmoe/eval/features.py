"""Frozen encoders from whatever a user has, and pooled features from them.

``load_encoder(source)`` takes:

- a DeepSpeed checkpoint directory (``global_stepN`` with ``ringmoe_meta.json``), read through consolidation;
- a consolidated or pruned directory (``ringmoe_model.json``);
- a HuggingFace export (``config.json`` with ``model_type: ringmoe``), loaded with ``transformers`` exactly as a
  downstream user would;
- ``random:<model yaml>[@seed]``: the same architecture at its initialization, the reference every score needs.

Each becomes a ``FrozenEncoder``: ``features(batch)`` is the final feature map, ``pooled(batch)`` its spatial
mean, both in eval mode without gradients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME, load_consolidated_model, read_deepspeed_checkpoint
from ringmoe.checkpoint.save import META_NAME
from ringmoe.config.schema import load_model_config
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import CheckpointError
from ringmoe.models.build import build_model


@dataclass
class FrozenEncoder:
    name: str
    modalities: list[str]
    module: nn.Module
    huggingface: bool = False  # a transformers model: called with pixel_values

    @torch.no_grad()
    def features(self, batch: MultiModalBatch) -> torch.Tensor:
        """(B, C, h, w), modalities stacked on the batch axis in the canonical order."""
        self.module.eval()
        if self.huggingface:
            return self.module(pixel_values=batch.images).last_hidden_state
        return self.module(batch).features

    def pooled(self, batch: MultiModalBatch) -> torch.Tensor:
        return self.features(batch).mean(dim=(2, 3))


def load_encoder(source: str | Path) -> FrozenEncoder:
    text = str(source)
    if text.startswith("random:"):
        spec, _, seed = text.removeprefix("random:").partition("@")
        config = load_model_config(spec)
        model = build_model(config, seed=int(seed or 0))
        return FrozenEncoder(f"random init ({Path(spec).stem}, seed {seed or 0})", list(config.in_chans), model.encoder)
    path = Path(source)
    if (path / META_NAME).is_file():
        state, config = read_deepspeed_checkpoint(path)
        model = build_model(config)
        model.load_state_dict(state)
        return FrozenEncoder(f"checkpoint {path.name}", list(config.in_chans), model.encoder)
    if (path / MODEL_CONFIG_NAME).is_file():
        model, config = load_consolidated_model(path)
        return FrozenEncoder(f"consolidated {path.name}", list(config.in_chans), model.encoder)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()).get(
        "model_type"
    ) == "ringmoe":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(path), trust_remote_code=True)
        return FrozenEncoder(f"huggingface {path.name}", list(model.config.in_chans), model, huggingface=True)
    raise CheckpointError(
        f"{source}: not an encoder source; expected a DeepSpeed checkpoint ({META_NAME}), a consolidated or pruned "
        f"directory ({MODEL_CONFIG_NAME}), a HuggingFace export (config.json, model_type ringmoe) or "
        "random:<model yaml>[@seed]"
    )

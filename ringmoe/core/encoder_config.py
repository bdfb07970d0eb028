"""The encoder's hyper-parameters, defined once.

``ModelConfig`` extends this dataclass (so the YAML keys are these fields), the encoder classes take it, and the
HuggingFace export stores its fields in ``config.json`` and rebuilds it there (this file is copied into every
export, so it imports nothing outside the copied modules).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ringmoe.core.modalities import MODALITY_CHANNELS


@dataclass
class EncoderConfig:
    """SwinV2-shaped hierarchical MoE encoder. Expert counts are per stage so pruned variants are configs."""

    img_size: int = 64
    patch_size: int = 4
    embed_dim: int = 32
    depths: list[int] = field(default_factory=lambda: [2, 2])
    num_heads: list[int] = field(default_factory=lambda: [2, 4])
    window_size: int = 4
    mlp_ratio: float = 4.0
    in_chans: dict[str, int] = field(default_factory=lambda: dict(MODALITY_CHANNELS))
    # Per stage: modal-specialized experts per modality, collaborative experts, and whether a shared expert runs.
    modal_experts: list[int] = field(default_factory=lambda: [4, 4])
    collab_experts: list[int] = field(default_factory=lambda: [4, 4])
    shared_expert: bool = True
    # Per stage, the shared expert's hidden width in multiples of mlp_ratio x width (empty: 1 everywhere). Set by
    # ``to_dense`` pruning when it folds a routed expert into the shared one.
    shared_expert_multiple: list[int] = field(default_factory=list)
    capacity_factor: float = 1.2
    min_capacity: int = 4


def encoder_fields(config: Any) -> dict[str, Any]:
    """The ``EncoderConfig`` fields of ``config`` (any object or mapping that has them all), as plain values."""
    get = config.get if isinstance(config, Mapping) else lambda name: getattr(config, name)
    return {f.name: _plain(get(f.name)) for f in dataclasses.fields(EncoderConfig)}


def encoder_config(config: Any) -> EncoderConfig:
    """An ``EncoderConfig`` of ``config``'s encoder fields (a ``ModelConfig``, a HuggingFace config, a dict)."""
    return EncoderConfig(**encoder_fields(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return value

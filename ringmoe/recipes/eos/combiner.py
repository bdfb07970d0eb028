"""The learned combiner of an ensemble of frozen specialists: each specialist's pooled features are projected to
a common width and tagged with a specialist embedding; a learned query attends over the specialists a sample
has (the others are masked) and gives the ensemble representation."""

from __future__ import annotations

import torch
from torch import nn


class Combiner(nn.Module):
    def __init__(self, feature_dims: dict[str, int], dim: int, heads: int = 4, num_classes: int = 0) -> None:
        super().__init__()
        self.names = list(feature_dims)
        self.project = nn.ModuleDict({n: nn.Linear(d, dim) for n, d in feature_dims.items()})
        # One embedding per specialist (not one matrix), so each is a tensor of its own for federated averaging.
        self.specialist_embed = nn.ParameterDict({n: nn.Parameter(torch.zeros(dim)) for n in feature_dims})
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes else None
        for embedding in self.specialist_embed.values():
            nn.init.trunc_normal_(embedding, std=0.02)
        nn.init.trunc_normal_(self.query, std=0.02)

    def owner(self, key: str) -> str | None:
        """The specialist a state-dict entry belongs to (its projection or embedding), None when shared."""
        parts = key.split(".")
        if parts[0] in ("project", "specialist_embed") and parts[1] in self.names:
            return parts[1]
        return None

    def forward(
        self, features: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``features``: specialist -> (B, D_s) pooled features (a specialist absent from the dict is absent for
        every sample); ``present``: specialist -> (B,) bool. Returns the head's output (the representation
        (B, dim) without a head) and the attention weight of each specialist (B, S)."""
        representation, weights = self.represent(features, present)
        return (self.head(representation) if self.head is not None else representation), weights

    def represent(
        self, features: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble representation (B, dim) before any head, and the attention weights (B, S)."""
        size = next(iter(features.values())).shape[0]
        tokens, mask = [], []
        for name in self.names:
            if name in features:
                tokens.append(self.project[name](features[name]) + self.specialist_embed[name])
                has = present.get(name) if present else None
                mask.append(has if has is not None else torch.ones(size, dtype=torch.bool))
            else:
                tokens.append(self.specialist_embed[name].expand(size, -1))
                mask.append(torch.zeros(size, dtype=torch.bool))
        keys = torch.stack(tokens, dim=1)
        available = torch.stack(mask, dim=1).to(keys.device)
        if not available.any(dim=1).all():
            raise ValueError("every sample needs at least one specialist's features")
        out, weights = self.attn(self.query.expand(size, -1, -1), keys, keys, key_padding_mask=~available)
        return self.norm(out[:, 0]), weights[:, 0]

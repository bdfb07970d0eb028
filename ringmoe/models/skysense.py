"""SkySense's factorized spatiotemporal encoder, composed from RingMoE's blocks.

- A spatial encoder per modality (a ``RingMoEEncoder`` with that modality's patch embedding; dense FFNs or
  MoE ones, as configured) encodes every date of the modality's sequence.
- A multi-modal temporal fusion transformer then attends, at every feature-map position, over all dates of all
  modalities of a place: each token is one (modality, date) feature plus a modality embedding and a date
  encoding (day of year, time of day, absolute date); a learned fusion token collects the result. Its FFNs can
  be mixtures of experts (``fusion_experts``), which ``ringmoe.parallel`` spreads with expert parallelism.

Padding dates are zeroed and encoded like real ones (every rank then routes the same number of tokens through
every expert all-to-all, as expert parallelism requires) and masked out of the fusion attention, so their
content never reaches the output.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ringmoe.core.batch import MultiModalBatch, RouterStats, SequenceBatch
from ringmoe.core.encoder_config import EncoderConfig
from ringmoe.models.encoder import RingMoEEncoder
from ringmoe.models.moe import HierarchicalMoE

DAYS_PER_YEAR = 365.25


def date_encoding(days: torch.Tensor, dim: int) -> torch.Tensor:
    """(…,) days since 1970-01-01 -> (…, dim): sin/cos harmonics of the day of year and of the time of day, and
    transformer-style sinusoids of the absolute date (periods from 1 day to ~27 years). An unknown date (NaN)
    encodes as zeros."""
    if dim % 8:
        raise ValueError(f"date encoding width {dim} must be a multiple of 8")
    quarter = dim // 4
    days = days.double()
    year_phase = 2 * math.pi * torch.remainder(days, DAYS_PER_YEAR) / DAYS_PER_YEAR
    day_phase = 2 * math.pi * torch.remainder(days, 1.0)
    harmonics = torch.arange(1, quarter // 2 + 1, dtype=torch.float64, device=days.device)
    periods = torch.logspace(0, 4, quarter, dtype=torch.float64, device=days.device)
    parts = [
        torch.sin(year_phase[..., None] * harmonics), torch.cos(year_phase[..., None] * harmonics),
        torch.sin(day_phase[..., None] * harmonics), torch.cos(day_phase[..., None] * harmonics),
        torch.sin(2 * math.pi * days[..., None] / periods), torch.cos(2 * math.pi * days[..., None] / periods),
    ]  # fmt: skip
    return torch.nan_to_num(torch.cat(parts, dim=-1), nan=0.0).float()


class FusionBlock(nn.Module):
    """Pre-norm transformer block over (place, token) sequences; the FFN is a shared expert plus optional
    routed (collaborative) experts."""

    def __init__(self, dim: int, heads: int, hidden: int, experts: int, capacity_factor: float, name: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = HierarchicalMoE(dim, hidden, [], 0, experts, True, capacity_factor, 4, name=name)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        ffn, losses, stats = self.ffn(self.norm2(x), {"fusion": x.shape[0]})
        return x + ffn, losses, stats


@dataclass
class SkySenseOutput:
    """``fused`` (B, D, h, w): the spatiotemporal representation; ``per_modality``: each modality's mean over
    its present dates (B, D, h, w) and ``has`` (B,) whether the sample has that modality at all;
    ``dates``: per modality the per-date maps (B, T, D, h, w); ``stages``: per modality every stage of its
    spatial encoder per date (B, T, C_s, h_s, w_s), finest first, the last one ``dates``."""

    fused: torch.Tensor
    per_modality: dict[str, torch.Tensor]
    has: dict[str, torch.Tensor]
    dates: dict[str, torch.Tensor]
    aux_loss: torch.Tensor
    z_loss: torch.Tensor
    router_stats: list[RouterStats] = field(default_factory=list)
    stages: dict[str, list[torch.Tensor]] = field(default_factory=dict)


class SkySenseEncoder(nn.Module):
    def __init__(
        self, encoder: EncoderConfig, fusion_depth: int = 2, fusion_heads: int = 4, fusion_experts: int = 0
    ) -> None:
        """``encoder``: the spatial encoders' settings; each takes one modality of ``in_chans`` and always runs
        its shared expert at width ``mlp_ratio`` x width."""
        super().__init__()
        stages = len(encoder.depths)
        embed_dim, patch_size, mlp_ratio = encoder.embed_dim, encoder.patch_size, encoder.mlp_ratio
        self.modalities = list(encoder.in_chans)
        self.spatial = nn.ModuleDict(
            {
                m: RingMoEEncoder(
                    dataclasses.replace(encoder, in_chans={m: c}, shared_expert=True, shared_expert_multiple=[])
                )
                for m, c in encoder.in_chans.items()
            }
        )
        dim = embed_dim * 2 ** (stages - 1)
        self.num_features = dim
        self.out_stride = patch_size * 2 ** (stages - 1)
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), dim))
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.date_proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fusion = nn.ModuleList(
            FusionBlock(dim, fusion_heads, hidden, fusion_experts, encoder.capacity_factor, f"fusion.{i}.ffn.")
            for i in range(fusion_depth)
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        nn.init.trunc_normal_(self.fusion_token, std=0.02)

    def forward(self, batch: SequenceBatch) -> SkySenseOutput:
        router_losses: torch.Tensor | None = None
        stats: list[RouterStats] = []
        dates, stages, tokens, padding, codes = {}, {}, [], [], []
        reference = next(iter(batch.images.values()))
        size = reference.shape[0]
        for index, modality in enumerate(self.modalities):
            # Every modality's encoder runs on every rank (its all-to-alls need every rank), on zeros when this
            # batch lacks the modality; those outputs are masked out like padding dates.
            images, present, days = self._inputs(batch, modality, reference)
            # Padding is zeroed: it still takes expert capacity (a fixed amount), but its content cannot matter.
            images = images * present[..., None, None, None].to(images.dtype)
            steps = images.shape[1]
            output = self.spatial[modality](MultiModalBatch({modality: images.flatten(0, 1)}))
            losses = torch.stack([output.aux_loss, output.z_loss])
            router_losses = losses if router_losses is None else router_losses + losses
            stats.extend(output.router_stats)
            stages[modality] = [stage.unflatten(0, (size, steps)) for stage in output.stage_features]
            maps = stages[modality][-1]  # (B, T, D, h, w)
            dates[modality] = maps
            h, w = maps.shape[-2:]
            tokens.append(maps.permute(0, 3, 4, 1, 2).reshape(size * h * w, steps, -1) + self.modality_embed[index])
            padding.append((~present).repeat_interleave(h * w, dim=0))
            codes.append(date_encoding(days, self.num_features).repeat_interleave(h * w, dim=0))
        x = torch.cat(tokens, dim=1)
        x = x + self.date_proj(torch.cat(codes, dim=1).to(x.dtype))
        pad = torch.cat(padding, dim=1)
        # Padded tokens are zeros: attention ignores them, and the fusion experts see a constant for them.
        x = x.masked_fill(pad[..., None], 0.0)
        x = torch.cat([self.fusion_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        mask = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        for block in self.fusion:
            x, losses, block_stats = block(x, mask)
            router_losses = router_losses + losses
            stats.extend(block_stats)
        fused = self.norm(x[:, 0]).reshape(size, h, w, -1).permute(0, 3, 1, 2).contiguous()
        # Every spatial encoder stays in the backward graph, also where its outputs were all masked out: under
        # expert parallelism its backward all-to-alls must run on every rank, or the ranks hang.
        fused = fused + 0.0 * sum(maps.sum() for maps in dates.values())
        per_modality, has = {}, {}
        for modality, maps in dates.items():
            present = self._inputs(batch, modality, reference)[1]
            weight = present.to(maps.dtype)[..., None, None, None]
            per_modality[modality] = (maps * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)
            has[modality] = present.any(dim=1)
        balance, z_loss = router_losses.unbind(0)
        return SkySenseOutput(fused, per_modality, has, dates, balance, z_loss, stats, stages)

    def _inputs(self, batch: SequenceBatch, modality: str, reference: torch.Tensor):
        if modality in batch.images:
            return batch.images[modality], batch.present[modality], batch.days[modality]
        size, _, _, height, width = reference.shape
        channels = self.spatial[modality].patch_embed[modality].proj.in_channels
        images = reference.new_zeros(size, 1, channels, height, width)
        return images, torch.zeros(size, 1, dtype=torch.bool, device=reference.device), reference.new_zeros(size, 1)

"""The RingMoE encoder and its SimMIM pretraining wrapper.

Plain single-device PyTorch. The encoder takes an ``EncoderConfig`` (``ringmoe.core.encoder_config``), which
the run's ``ModelConfig`` extends and the exported HuggingFace config rebuilds, so the same class is built from
either. Activation checkpointing is applied from outside (``ringmoe.parallel.checkpointing``).
"""

from __future__ import annotations

import torch
from torch import nn

from ringmoe.core.batch import ModelOutput, MultiModalBatch, RouterStats
from ringmoe.core.encoder_config import EncoderConfig
from ringmoe.models.moe import ROUTER_LOSSES, HierarchicalMoE
from ringmoe.models.swin import PatchMerging, SwinBlock


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection for one modality: (B, C_m, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Stage(nn.Module):
    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)


class RingMoEEncoder(nn.Module):
    """SwinV2-shaped hierarchical MoE encoder with one patch embedding per modality."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        in_chans, patch_size, embed_dim = config.in_chans, config.patch_size, config.embed_dim
        depths, mlp_ratio = config.depths, config.mlp_ratio
        self.modalities = list(in_chans)
        self.patch_size = patch_size
        self.patch_embed = nn.ModuleDict({m: PatchEmbed(c, embed_dim, patch_size) for m, c in in_chans.items()})
        # Not zero: an all-zero token gives q = k = 0 in the first block and cosine attention's normalisation
        # has an unbounded gradient there.
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, 1, embed_dim), std=0.02))
        stages = []
        resolution, dim = config.img_size // patch_size, embed_dim
        shared_multiple = config.shared_expert_multiple or [1] * len(depths)
        for index, depth in enumerate(depths):
            downsample = None
            if index > 0:
                downsample = PatchMerging(dim)
                resolution, dim = resolution // 2, dim * 2
            blocks = [
                SwinBlock(
                    dim,
                    config.num_heads[index],
                    resolution,
                    config.window_size,
                    shift=bool(block % 2),
                    ffn=HierarchicalMoE(
                        dim,
                        int(dim * mlp_ratio),
                        self.modalities,
                        config.modal_experts[index],
                        config.collab_experts[index],
                        config.shared_expert,
                        config.capacity_factor,
                        config.min_capacity,
                        name=f"stages.{index}.blocks.{block}.ffn.",
                        shared_hidden_dim=int(dim * mlp_ratio) * shared_multiple[index],
                    ),
                )
                for block in range(depth)
            ]
            stages.append(Stage(blocks, downsample))
        self.stages = nn.ModuleList(stages)
        self.num_features = dim
        self.out_stride = patch_size * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_weights)

    def embed(self, batch: MultiModalBatch, masks: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Patch-embed every modality, replace masked patches by the mask token, stack on the batch axis."""
        parts = []
        for modality in batch.modalities():
            x = self.patch_embed[modality](batch.images[modality])
            if masks is not None and modality in masks:
                w = masks[modality].unsqueeze(-1).to(x.dtype)
                x = x * (1 - w) + self.mask_token.to(x.dtype) * w
            parts.append(x)
        return torch.cat(parts, dim=0)

    def forward_features(self, batch: MultiModalBatch, masks: dict[str, torch.Tensor] | None = None) -> ModelOutput:
        """``masks``: per modality a (B_m, H/patch, W/patch) 0/1 tensor of patches to hide (SimMIM)."""
        sizes = batch.sizes()
        x = self.embed(batch, masks)
        router_losses = x.new_zeros(len(ROUTER_LOSSES), dtype=torch.float32)
        stats: list[RouterStats] = []
        stage_outputs = []
        for stage in self.stages:
            if stage.downsample is not None:
                x = stage.downsample(x)
            for block in stage.blocks:
                x, block_aux, block_stats = block(x, sizes)
                router_losses = router_losses + block_aux
                stats.extend(block_stats)
            stage_outputs.append(x)
        features = self.norm(x).permute(0, 3, 1, 2).contiguous()
        stage_features = [s.permute(0, 3, 1, 2) for s in stage_outputs[:-1]] + [features]
        balance, z_loss = router_losses.unbind(0)
        return ModelOutput(
            features=features,
            modality_sizes=sizes,
            aux_loss=balance,
            z_loss=z_loss,
            router_stats=stats,
            stage_features=stage_features,
        )

    def forward(self, batch: MultiModalBatch, masks: dict[str, torch.Tensor] | None = None) -> ModelOutput:
        return self.forward_features(batch, masks)


class RingMoESimMIM(nn.Module):
    """Encoder plus one light SimMIM decoder per modality (1x1 conv + pixel shuffle to input resolution) and,
    for the two-view contrast, a projection head on the pooled final features (SimCLR's MLP)."""

    def __init__(
        self, encoder: EncoderConfig, decoder_extra_channels: dict[str, int] | None = None, projection_dim: int = 0
    ) -> None:
        """``decoder_extra_channels``: per modality, outputs beyond the input channels (physical targets), which
        follow the reconstructed channels. ``projection_dim``: the projection head's output width (0: none)."""
        super().__init__()
        self.encoder = RingMoEEncoder(encoder)
        width = self.encoder.num_features
        self.projector = (
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, projection_dim))
            if projection_dim
            else None
        )
        stride = self.encoder.out_stride
        in_chans = encoder.in_chans
        extra = decoder_extra_channels or {}
        self.decoders = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Conv2d(self.encoder.num_features, stride * stride * (c + extra.get(m, 0)), 1),
                    nn.PixelShuffle(stride),
                )
                for m, c in in_chans.items()
            }
        )

    def forward(
        self, batch: MultiModalBatch, masks: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], ModelOutput]:
        output = self.encoder.forward_features(batch, masks)
        features = output.split()
        reconstructions = {m: self.decoders[m](f) for m, f in features.items()}
        if self.projector is not None:
            output.projections = self.projector(output.features.mean(dim=(2, 3)))
        return reconstructions, output


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

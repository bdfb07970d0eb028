"""What every evaluated encoder is: a ``FrozenEncoder`` giving multi-scale feature maps in eval mode, or an
``EncoderUnavailable`` saying why it cannot run here. Loaders (``features``, ``ensemble``) build them; the
tasks, fine-tuning and the runner only use them, so this sits below all of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ringmoe.core.batch import MultiModalBatch, SequenceBatch
from ringmoe.core.errors import RingMoEError


class EncoderUnavailable(RingMoEError):
    """A baseline that cannot run here (library missing, modality it has no input for); the report says why."""


@dataclass
class FrozenEncoder:
    name: str
    modalities: list[str]
    module: nn.Module
    img_size: int
    # How the module is called: "ringmoe" with a MultiModalBatch, "huggingface" with pixel_values, "skysense"
    # (and "skysense_hf") with a one-date SequenceBatch (pixel_values), "images" (baselines) with the images.
    interface: str = "ringmoe"
    device: str = "cpu"  # where the module runs; features always come back on the CPU

    def to(self, device: str) -> "FrozenEncoder":
        self.module.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def stages(self, images: torch.Tensor, modality: str) -> list[torch.Tensor]:
        """Feature maps (B, C_s, h_s, w_s) of every stage, finest first, for one modality's images."""
        if modality not in self.modalities:
            raise EncoderUnavailable(f"{self.name} has no input for modality {modality!r} (has {self.modalities})")
        self.module.eval()
        images = images.to(self.device)
        if self.interface == "huggingface":
            maps = self.module(pixel_values={modality: images}, output_hidden_states=True).hidden_states
        elif self.interface == "skysense_hf":  # one date: (B, 1, C, H, W)
            maps = self.module(pixel_values={modality: images[:, None]}, output_hidden_states=True).hidden_states
        elif self.interface == "skysense":
            maps = _skysense_stages(self.module, images, modality)
        elif self.interface == "images":
            maps = self.module(images, modality)
        else:
            maps = self.module(MultiModalBatch({modality: images})).stage_features
        return [m.cpu() for m in maps]

    def features(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        return self.stages(images, modality)[-1]

    def pooled(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        return self.features(images, modality).mean(dim=(2, 3))


def _skysense_stages(encoder: nn.Module, images: torch.Tensor, modality: str) -> list[torch.Tensor]:
    """The modality's spatial-encoder stages, then the fused map, for one date per image (the HF model's
    ``hidden_states`` order)."""
    one = torch.ones(len(images), 1, dtype=torch.bool)
    batch = SequenceBatch(
        {modality: images[:, None]}, {modality: one}, {modality: torch.full((len(images), 1), float("nan"))},
        images.new_zeros(len(images), 2),
    )  # fmt: skip
    output = encoder(batch)
    return [*(stage[:, 0] for stage in output.stages[modality][:-1]), output.fused]

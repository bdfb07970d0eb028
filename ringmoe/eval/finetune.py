"""A short end-to-end fine-tune, the score a user who trains on the labels would see beside the frozen-encoder
probes: a copy of the encoder (the caller's module is never touched) with a linear head on its pooled last-stage
features, trained together on the labelled images, then scored on the test images. Seeded: the batch order, the
augmentation, the head's initialization and any randomness inside the model come from ``seed``."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ringmoe.config.evaluation import FinetuneConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.eval.encoder import EncoderUnavailable, FrozenEncoder


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, modality: str, width: int, classes: int) -> None:
        super().__init__()
        self.encoder, self.modality = encoder, modality
        self.head = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) and the routers' load-balancing loss."""
        output = self.encoder(MultiModalBatch({self.modality: images}))
        return self.head(output.features.mean(dim=(2, 3))), output.aux_loss


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    # The trainer's schedule (parallel/engine.py) sits beside DeepSpeed; importing it would load DeepSpeed here.
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and quarter turn per image: a scene's class does not depend on its orientation."""
    flips = torch.rand(len(images), generator=generator) < 0.5
    turns = torch.randint(4, (len(images),), generator=generator)
    images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    return torch.stack([image.rot90(int(k), dims=(-2, -1)) for image, k in zip(images, turns)])


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """The encoder's input size: resized when the scenes differ from it (EuroSAT's 64 px fits the tiny models)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def finetune_predict(
    encoder: FrozenEncoder,
    images: torch.Tensor,
    modality: str,
    labels: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    classes: int,
    settings: FinetuneConfig,
    seed: int,
    score_batch_size: int,
) -> torch.Tensor:
    """Fine-tune a copy of ``encoder`` with a linear head on ``images[train]`` for ``settings.steps`` steps and
    return its predicted class for each of ``images[test]`` (on the CPU). Images are indexed batch by batch, so
    a large set is never copied whole. The model trains in train mode (routing with its capacity limit, as in
    pretraining) and predicts in eval mode (dropless routing: a prediction does not depend on its batch)."""
    if encoder.interface != "ringmoe":
        raise EncoderUnavailable(
            f"fine-tuning takes a RingMoE encoder (interface 'ringmoe'); {encoder.name} has interface "
            f"{encoder.interface!r}" + (" and no trainable weights" if encoder.interface == "images" else "")
        )
    if modality not in encoder.modalities:
        raise EncoderUnavailable(f"{encoder.name} has no input for modality {modality!r} (has {encoder.modalities})")
    device, size = encoder.device, encoder.img_size
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[torch.device(device)] if device != "cpu" else []):
        torch.manual_seed(seed)  # the head's initialization and any randomness inside the model
        module = copy.deepcopy(encoder.module).requires_grad_(True).eval()
        with torch.no_grad():
            width = module(MultiModalBatch({modality: _fit(images[train[:1]], size).to(device)})).features.shape[1]
        model = _Classifier(module, modality, width, classes).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _warmup_cosine(step, settings.warmup_steps, settings.steps)
        )
        model.train()
        order = torch.empty(0, dtype=torch.long)
        for _ in range(settings.steps):
            if len(order) < min(settings.batch_size, len(train)):  # a new seeded epoch; drop the remainder
                order = train[torch.randperm(len(train), generator=generator)]
            batch, order = order[: settings.batch_size], order[settings.batch_size :]
            logits, aux_loss = model(_augment(_fit(images[batch], size), generator).to(device))
            loss = F.cross_entropy(logits, labels[batch].to(device)) + settings.aux_loss_coef * aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            schedule.step()
        model.eval()
        predicted = []
        with torch.no_grad():
            for start in range(0, len(test), score_batch_size):
                batch = _fit(images[test[start : start + score_batch_size]], size).to(device)
                predicted.append(model(batch)[0].argmax(1).cpu())
        return torch.cat(predicted)

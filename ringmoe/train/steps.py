"""What one micro-batch of each recipe does between the loader and ``engine.backward``.

``RingMoEStep``: SimMIM masks drawn on the CPU, the masked model, the physics-informed objective; with the view
contrast on, two augmented views of each image in one forward (the first masked, the second whole) and an
NT-Xent loss between their projections, per modality.
``SkySenseStep``: two augmented views of a place batch, the student/teacher forward with all contrastive and
prototype terms, and after each optimizer step the teacher's EMA update on the momentum schedule.

Random draws (masks, views, pixel samples) come from the one recipe generator the checkpoint saves, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ringmoe.config.schema import RunConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.models.ema import momentum_at
from ringmoe.objectives.build import build_view_augmentation
from ringmoe.objectives.image_views import nt_xent
from ringmoe.objectives.views import augmented_view


class RingMoEStep:
    def __init__(
        self, objective, generator: torch.Generator, config: RunConfig, device, dtype, data_group=None
    ) -> None:
        """``data_group``: the data-parallel ranks, whose images are the view contrast's negatives (None: this
        process's images only)."""
        self.objective, self.generator = objective, generator
        self.data_group = data_group
        self.img_size = config.model.img_size
        self.views = config.objective.views
        self.augment = build_view_augmentation(config.objective)
        self.device, self.dtype = device, dtype

    def forward(self, engine, batch):
        """(loss, metrics, model output) of one micro-batch."""
        check_tile_size(batch.images, self.img_size)
        if self.augment is not None:
            return self._two_views(engine, batch)
        masks = self.objective.masks.for_batch(batch, self.generator)  # drawn on the CPU: same on any device
        batch = batch.to(self.device, self.dtype)
        masks = {m: mask.to(self.device) for m, mask in masks.items()}
        reconstructions, output = engine(batch, masks)
        loss, metrics = self.objective(batch, reconstructions, output, masks)
        return loss, metrics, output

    def _two_views(self, engine, batch):
        """Both views go through one forward: experts see one batch, and each all-to-all runs once."""
        first = {m: self.augment(x, self.generator, m == "sar_complex") for m, x in batch.images.items()}
        second = {m: self.augment(x, self.generator, m == "sar_complex") for m, x in batch.images.items()}
        masked = MultiModalBatch(first)
        masks = self.objective.masks.for_batch(masked, self.generator)
        if self.objective.reconstruction_weight == 0:
            masks = {m: torch.zeros_like(mask) for m, mask in masks.items()}
        both = MultiModalBatch({m: torch.cat([first[m], second[m]]) for m in first}).to(self.device, self.dtype)
        both_masks = {m: torch.cat([mask, torch.zeros_like(mask)]).to(self.device) for m, mask in masks.items()}
        reconstructions, output = engine(both, both_masks)
        halves = {m: len(x) for m, x in first.items()}
        loss, metrics = self.objective(
            masked.to(self.device, self.dtype),
            {m: r[: halves[m]] for m, r in reconstructions.items()},
            output,
            {m: mask[: halves[m]] for m, mask in both_masks.items()},
        )
        contrast = []
        for modality, projections in zip(
            output.modality_sizes, output.projections.split(list(output.modality_sizes.values()))
        ):
            value = nt_xent(
                projections[: halves[modality]],
                projections[halves[modality] :],
                self.views.temperature,
                self.data_group,
            )
            metrics[f"loss/views/{modality}"] = float(value.detach())
            contrast.append(value)
        contrast_loss = torch.stack(contrast).mean()
        metrics["loss/views"] = float(contrast_loss.detach())
        return loss + self.views.weight * contrast_loss, metrics, output

    def samples(self, batch) -> int:
        return sum(batch.sizes().values())

    def after_optimizer_step(self, engine, step: int) -> None:
        pass


class SkySenseStep:
    def __init__(self, generator: torch.Generator, config: RunConfig, device, dtype) -> None:
        self.generator = generator
        self.settings = config.contrastive
        self.model = config.model
        self.steps = config.train.steps
        self.device, self.dtype = device, dtype

    def forward(self, engine, batch):
        check_tile_size({m: x.flatten(0, 1) for m, x in batch.images.items()}, self.model.img_size)
        s = self.settings
        views = [augmented_view(batch, self.generator, s.view_gain, s.view_noise, s.view_drop_date) for _ in range(2)]
        student, teacher = (v.to(self.device, self.dtype) for v in views)
        group = dist.group.WORLD if dist.is_initialized() else None
        return engine(
            student, teacher, s, self.generator, self.model.aux_loss_coef, self.model.router_z_loss_coef, group
        )

    def samples(self, batch) -> int:
        return len(batch.location)

    def after_optimizer_step(self, engine, step: int) -> None:
        engine.module.update_teacher(momentum_at(step, self.steps, self.settings.teacher_momentum))


def check_tile_size(images: dict[str, torch.Tensor], img_size: int) -> None:
    for modality, tensor in images.items():
        if tuple(tensor.shape[-2:]) != (img_size, img_size):
            raise ConfigError(
                f"data: {modality} tiles are {tuple(tensor.shape[-2:])}, model.img_size is {img_size}; "
                "rebuild the shards with a matching tile_size or change model.img_size"
            )

"""The SkySense recipe: multi-granularity contrastive learning between a student and its EMA teacher, across
augmented views and across modalities, plus geo-context prototype learning.

Terms (``SkySensePretrain.forward`` returns them all, weighted into ``loss/total``):

- ``pixel``: fused feature maps of the two views, position by position;
- ``object``: regions found by k-means on the teacher's fused map, region means contrasted;
- ``image``: pooled fused features;
- ``cross_modal``: a sample's pooled features of one modality (student) against another modality of the same
  sample (teacher), for every ordered pair of modalities the sample has;
- ``prototypes``: geo-context prototypes of the sample's geographic cell, Sinkhorn-assigned from the teacher.

It reads places (``data.places_per_batch``); one micro-batch (``SkySenseStep``) is two augmented views of a
place batch through student and teacher with every term above, and after each optimizer step the teacher's EMA
update on the momentum schedule. The EMA teacher's encoder is released (HuggingFace model type ``skysense``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from ringmoe.config.schema import ContrastiveConfig, FusionConfig, ModelConfig, RunConfig
from ringmoe.core.batch import SequenceBatch
from ringmoe.core.encoder_config import encoder_config, encoder_fields
from ringmoe.core.errors import ConfigError
from ringmoe.models.ema import ema_update, freeze_parameters, make_teacher, momentum_at
from ringmoe.models.size import short_count
from ringmoe.models.skysense import SkySenseEncoder, SkySenseOutput
from ringmoe.objectives.contrastive import info_nce, object_contrast, pixel_contrast
from ringmoe.objectives.geo_prototypes import GeoPrototypes, geo_cell, region_grid
from ringmoe.objectives.views import augmented_view
from ringmoe.recipes.registry import HFRelease, Recipe, register
from ringmoe.recipes.step import check_tile_size

TERMS = ("pixel", "object", "image", "cross_modal", "prototypes")


class Projection(nn.Module):
    """Pixel head (1x1 conv) and image head (MLP) on the fused map, and one image head per modality."""

    def __init__(self, dim: int, out: int, modalities: list[str]) -> None:
        super().__init__()
        self.pixel = nn.Conv2d(dim, out, 1)
        self.image = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))
        self.modality = nn.ModuleDict({m: nn.Linear(dim, out) for m in modalities})


class SkySensePretrain(nn.Module):
    """Student encoder + heads (trained), teacher encoder + heads (EMA of the student), geo prototypes (EMA).

    The structure comes from the model config; how it learns (``ContrastiveConfig``) is given at each call, so
    a checkpoint rebuilds from its model config alone."""

    def __init__(self, encoder: SkySenseEncoder, fusion: FusionConfig) -> None:
        super().__init__()
        self.student = encoder
        self.student_heads = Projection(encoder.num_features, fusion.projection_dim, encoder.modalities)
        self.teacher = make_teacher(encoder)
        self.teacher_heads = make_teacher(self.student_heads)
        self.prototypes = GeoPrototypes(fusion.prototype_cells, fusion.prototypes_per_cell, fusion.projection_dim)

    def freeze_teacher(self) -> None:
        """No gradient and no optimizer for the teacher; call again after parallelization swaps in new modules
        (expert-parallel layers are built trainable)."""
        freeze_parameters(self.teacher)
        freeze_parameters(self.teacher_heads)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)
        ema_update(self.teacher_heads, self.student_heads, momentum)

    def forward(
        self,
        student_view: SequenceBatch,
        teacher_view: SequenceBatch,
        settings: ContrastiveConfig,
        generator: torch.Generator,
        aux_coef: float = 0.0,
        z_coef: float = 0.0,
        group=None,
    ) -> tuple[torch.Tensor, dict[str, float], SkySenseOutput]:
        """The weighted sum of the terms plus the student's router losses (``aux_coef``, ``z_coef``)."""
        self.prototypes.momentum = settings.prototype_momentum
        s = self.student(student_view)
        with torch.no_grad():
            self.teacher.eval()
            t = self.teacher(teacher_view)
        sh, th = self.student_heads, self.teacher_heads
        s_image, t_image = sh.image(s.fused.mean(dim=(2, 3))), th.image(t.fused.mean(dim=(2, 3))).detach()
        s_pixel, t_pixel = sh.pixel(s.fused), th.pixel(t.fused).detach()  # shared by the pixel and object terms
        terms = {
            "pixel": pixel_contrast(s_pixel, t_pixel, settings.temperature, settings.max_pixels, generator),
            "object": object_contrast(s_pixel, t_pixel, settings.clusters, settings.temperature),
            "image": info_nce(s_image, t_image, settings.temperature),
            "cross_modal": self._cross_modal(s, t, settings.temperature),
        }
        lon, lat = student_view.location[:, 0], student_view.location[:, 1]
        cells = geo_cell(lon, lat, settings.cell_degrees, settings.region_bounds)
        terms["prototypes"], proto_stats = self.prototypes(s_image, t_image, cells.to(s_image.device), group)
        total = sum(settings.weights.get(name, 1.0) * value for name, value in terms.items())
        total = total + aux_coef * s.aux_loss + z_coef * s.z_loss
        metrics = {f"loss/{name}": float(value.detach()) for name, value in terms.items()}
        metrics.update({"loss/aux": float(s.aux_loss.detach()), "loss/z": float(s.z_loss.detach())})
        metrics.update({f"prototypes/{k}": float(v) for k, v in proto_stats.items()})
        return total, metrics, s

    def _cross_modal(self, s: SkySenseOutput, t: SkySenseOutput, temperature: float) -> torch.Tensor:
        """InfoNCE from each modality's student features to another modality's teacher features of the same
        samples (those that have both); 0 when no two samples share two modalities. Every head stays in the
        graph with a zero term, so every rank reduces the same gradients whatever its batch holds."""
        sh, th = self.student_heads, self.teacher_heads
        losses = []
        for a in self.student.modalities:
            for b in self.student.modalities:
                both = s.has[a] & t.has[b]
                if a == b or int(both.sum()) < 2:  # InfoNCE needs a negative
                    continue
                query = sh.modality[a](s.per_modality[a].mean(dim=(2, 3))[both])
                key = th.modality[b](t.per_modality[b].mean(dim=(2, 3))[both]).detach()
                losses.append(info_nce(query, key, temperature))
        connected = 0.0 * sum(p.sum() for p in sh.modality.parameters())
        return (torch.stack(losses).mean() if losses else 0.0) + connected


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


@register
class SkySenseRecipe(Recipe):
    name = "skysense"
    released_prefix = "teacher."
    reads_places = True
    hf = HFRelease(
        model_type="skysense",
        config_class="SkySenseConfig",
        architecture="SkySenseModel",
        interface="skysense_hf",
        title="SkySense spatiotemporal encoder",
        summary=(
            "A RingMoE spatial encoder per modality and a multi-modal temporal fusion transformer, pretrained with "
            "multi-granularity contrastive learning and geo-context prototypes (the EMA teacher's weights)."
        ),
        input_shape="(B, T, C, {size}) (dates on axis 1; `present` and `days` optional)",
    )

    def validate(self, config: RunConfig) -> None:
        contrastive, sets = config.contrastive, config.model.fusion.prototype_cells
        rows, columns = region_grid(contrastive.region_bounds, contrastive.cell_degrees)
        if rows * columns > sets:
            raise ConfigError(
                f"contrastive: the region grid over {list(contrastive.region_bounds)} at cell_degrees="
                f"{contrastive.cell_degrees} has {rows} x {columns} = {rows * columns} regions, but "
                f"model.fusion.prototype_cells={sets}: each region needs its own prototype set (coarser "
                "cell_degrees, smaller region_bounds or more prototype_cells)"
            )
        ep = config.parallel.expert_parallel_size
        if config.model.fusion.experts % ep:
            raise ConfigError(
                f"model.fusion.experts={config.model.fusion.experts} is not divisible by "
                f"parallel.expert_parallel_size={ep}"
            )

    def build_model(self, config: ModelConfig) -> SkySensePretrain:
        fusion = config.fusion
        encoder = SkySenseEncoder(encoder_config(config), fusion.depth, fusion.heads, fusion.experts)
        return SkySensePretrain(encoder, dataclasses.replace(fusion))

    def after_parallelize(self, model: nn.Module) -> None:
        model.freeze_teacher()  # parallelization's new layers must not reach the optimizer

    def build_step(self, config: RunConfig, prepared, generator, device, dtype, data_group) -> SkySenseStep:
        return SkySenseStep(generator, config, device, dtype)

    def released(self, model: nn.Module) -> tuple[nn.Module, str]:
        return model.teacher, "skysense"

    def hf_config(self, config: ModelConfig) -> dict:
        fusion = config.fusion
        return {
            "encoder": encoder_fields(config),
            "fusion": {"depth": fusion.depth, "heads": fusion.heads, "experts": fusion.experts},
        }

    def describe(self, config: ModelConfig, layouts=()) -> list[str]:
        """Parameters by part (meta device): the released encoder and what pretraining adds."""
        with torch.device("meta"):
            model = self.build_model(config)
        encoder = model.student

        def count(module) -> int:
            return sum(p.numel() for p in module.parameters())

        spatial = {m: count(e) for m, e in encoder.spatial.items()}
        total_encoder = count(encoder)
        lines = [
            f"{config.name}: {short_count(total_encoder)} encoder parameters (SkySense recipe), "
            f"{short_count(count(model))} in pretraining (student, EMA teacher, heads; prototypes are a buffer)",
            f"  input {config.img_size}x{config.img_size} per date, patch {config.patch_size}, depths "
            f"{config.depths}, width {config.embed_dim}; fusion depth {config.fusion.depth}, {config.fusion.heads} "
            f"heads, {config.fusion.experts} routed experts per FFN",
        ]
        lines += [f"  spatial encoder {m:<16}{n:>16,}" for m, n in spatial.items()]
        lines.append(f"  {'temporal fusion':<32}{total_encoder - sum(spatial.values()):>16,}")
        return lines

"""SkySense pretraining: multi-granularity contrastive learning between a student and its EMA teacher, across
augmented views and across modalities, plus geo-context prototype learning.

Terms (``SkySensePretrain.forward`` returns them all, weighted into ``loss/total``):

- ``pixel``: fused feature maps of the two views, position by position;
- ``object``: regions found by k-means on the teacher's fused map, region means contrasted;
- ``image``: pooled fused features;
- ``cross_modal``: a sample's pooled features of one modality (student) against another modality of the same
  sample (teacher), for every ordered pair of modalities the sample has;
- ``prototypes``: geo-context prototypes of the sample's geographic cell, Sinkhorn-assigned from the teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from ringmoe.config.schema import ContrastiveConfig, FusionConfig
from ringmoe.core.batch import SequenceBatch
from ringmoe.models.ema import ema_update, freeze_parameters, make_teacher
from ringmoe.models.skysense import SkySenseEncoder, SkySenseOutput
from ringmoe.objectives.contrastive import info_nce, object_contrast, pixel_contrast
from ringmoe.objectives.geo_prototypes import GeoPrototypes, geo_cell

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
        cells = geo_cell(lon, lat, settings.cell_degrees, self.prototypes.prototypes.shape[0])
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

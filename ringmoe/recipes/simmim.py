"""The RingMoE recipe: the hierarchical MoE encoder with per-modality SimMIM decoders, trained by the
physics-informed masked-image objective (optionally with a two-view contrast), released as the encoder alone
(HuggingFace model type ``ringmoe``).

One micro-batch (``RingMoEStep``): SimMIM masks drawn on the CPU, the masked model, the physics-informed
objective; with the view contrast on, two augmented views of each image in one forward (the first masked, the
second whole) and an NT-Xent loss between their projections, per modality. Random draws come from the one
recipe generator the checkpoint saves, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch

from ringmoe.config.schema import ModelConfig, RunConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.encoder_config import encoder_fields
from ringmoe.data.catalog import dataset_sensors
from ringmoe.models.factory import build_model
from ringmoe.models.memory import Layout, memory_table
from ringmoe.models.size import COMPONENTS, forward_flops_per_sample, parameter_report, short_count
from ringmoe.objectives.factory import build_objective, build_view_augmentation
from ringmoe.objectives.image_views import nt_xent
from ringmoe.recipes.registry import HFRelease, Recipe, register
from ringmoe.recipes.step import check_tile_size


@register
class RingMoESimMIMRecipe(Recipe):
    name = "ringmoe"
    online_probe = True
    hf = HFRelease(
        model_type="ringmoe",
        config_class="RingMoEConfig",
        architecture="RingMoEModel",
        interface="huggingface",
        title="RingMoE encoder",
        summary="SwinV2-shaped hierarchical mixture-of-experts encoder pretrained with per-modality SimMIM.",
        input_shape="(B, C, {size})",
    )

    def prepare(self, config: RunConfig):
        # The objective: physical targets are laid out from the sensors the data was built with.
        return build_objective(config.objective, config.model, dataset_sensors(config.data.shards))

    def build_model(self, config: ModelConfig):
        return build_model(config)

    def build_step(self, config: RunConfig, prepared, generator, device, dtype, data_group) -> "RingMoEStep":
        return RingMoEStep(prepared, generator, config, device, dtype, data_group)

    def flops_per_sample(self, config: ModelConfig) -> float:
        return forward_flops_per_sample(config)["total"]

    def hf_config(self, config: ModelConfig) -> dict:
        return encoder_fields(config)

    def describe(self, config: ModelConfig, layouts: list[Layout] = ()) -> list[str]:
        with torch.device("meta"):
            model = build_model(config)
        report = parameter_report(model, list(config.in_chans))
        flops = forward_flops_per_sample(config)
        active = max(report.active_per_token.values())
        lines = [
            f"{config.name}: {short_count(report.encoder)} encoder parameters "
            f"({short_count(report.total)} with the SimMIM decoders), {short_count(active)} active per token",
            f"  input {config.img_size}x{config.img_size}, patch {config.patch_size}, depths {config.depths}, "
            f"width {config.embed_dim}, experts per block: modal {config.modal_experts} x {len(config.in_chans)} "
            f"modalities, collaborative {config.collab_experts}, shared {int(config.shared_expert)}",
            f"  {'component':<16}{'parameters':>16}{'share':>8}",
        ]
        for component in COMPONENTS:
            count = report.by_component.get(component, 0)
            if count:
                lines.append(f"  {component:<16}{count:>16,}{count / report.total:>8.1%}")
        lines.append(
            "  active per token: " + ", ".join(f"{m} {short_count(n)}" for m, n in report.active_per_token.items())
        )
        lines.append(
            f"  forward FLOPs per sample: {flops['total'] / 1e9:.1f} GFLOPs (training step ~3x: "
            f"{3 * flops['total'] / 1e9:.1f}); "
            + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items() if k != "total")
        )
        if layouts:
            lines += memory_table(report, config, layouts)
        return lines


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

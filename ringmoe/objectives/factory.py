"""The pretraining objective of a run config: per-modality terms resolved against the sensor registry."""

from __future__ import annotations

from ringmoe.config.schema import ModelConfig, ObjectiveConfig
from ringmoe.core.errors import ConfigError
from ringmoe.core.sensors import SensorRegistry, load_registry
from ringmoe.objectives.image_views import ViewAugmentation
from ringmoe.objectives.sar_amplitude import SARAmplitudeTerms, db_layout
from ringmoe.objectives.sar_complex import ComplexSARTerms, iq_channel_index
from ringmoe.objectives.simmim import MaskGenerator, ModalityTerms, Reconstruction, SimMIMLoss
from ringmoe.objectives.spectral import SpectralTerms, index_channels


def _complex_channel_names(registry: SensorRegistry) -> list[str]:
    layouts = {}
    for sensor in registry.by_modality("sar_complex"):
        layouts[sensor.name] = [f"{b}_{part}" for b in sensor.modality_bands for part in ("I", "Q")]
    if len({tuple(v) for v in layouts.values()}) != 1:
        raise ConfigError(f"objective.sar_complex: sources need one shared I/Q channel order, got {layouts}")
    return next(iter(layouts.values()))


def modality_terms(
    objective: ObjectiveConfig, modalities: list[str], registry: SensorRegistry
) -> dict[str, ModalityTerms]:
    terms: dict[str, ModalityTerms] = {}
    if "sar_complex" in modalities and objective.sar_complex.channels():
        targets = objective.sar_complex
        terms["sar_complex"] = ComplexSARTerms(
            iq_channel_index(_complex_channel_names(registry)),
            span=targets.span,
            pauli=targets.pauli,
            h_a_alpha=targets.h_a_alpha,
            window=targets.window,
            db_range=(targets.db_range[0], targets.db_range[1]),
            target_weight=targets.weight,
        )
    if "sar_amplitude" in modalities and objective.sar_amplitude.loss != "l1_db":
        channels, db_range = db_layout(registry.by_modality("sar_amplitude"))
        terms["sar_amplitude"] = SARAmplitudeTerms(
            channels, db_range, objective.sar_amplitude.loss, objective.sar_amplitude.looks
        )
    for modality in ("multispectral", "optical"):
        spectral = getattr(objective, modality)
        wanted = [name for name in ("ndvi", "ndwi") if getattr(spectral, name)]
        if modality in modalities and wanted:
            channels = index_channels(modality, registry.by_modality(modality), wanted)
            terms[modality] = SpectralTerms(channels, target_weight=spectral.weight)
    return terms


def build_objective(
    objective: ObjectiveConfig, model: ModelConfig, registry: SensorRegistry | None = None
) -> SimMIMLoss:
    registry = registry if registry is not None else load_registry()
    modalities = list(model.in_chans)
    terms = modality_terms(objective, modalities, registry)
    predicted = {m: t.extra_channels for m, t in terms.items() if t.extra_channels}
    if predicted != dict(model.decoder_extra_channels):
        raise ConfigError(
            f"model.decoder_extra_channels {dict(model.decoder_extra_channels)} but the objective predicts "
            f"{predicted} target channels; load the run config with load_config, which derives them"
        )
    if not any(objective.modality_weights.get(m, 1.0) > 0 for m in modalities):
        raise ConfigError(f"objective.modality_weights {dict(objective.modality_weights)} leave every modality at 0")
    masks = MaskGenerator(model.img_size, model.mask_patch_size, model.patch_size, model.mask_ratio)
    plain = Reconstruction(normalize_block=model.mask_patch_size if objective.normalized_target else 0)
    return SimMIMLoss(
        masks,
        model.aux_loss_coef,
        model.router_z_loss_coef,
        terms,
        dict(objective.modality_weights),
        objective.reconstruction_weight,
        plain,
    )


def build_view_augmentation(objective: ObjectiveConfig) -> ViewAugmentation | None:
    """The two-view contrast's augmentation, or None when ``objective.views`` is off."""
    views = objective.views
    if views.weight == 0:
        return None
    return ViewAugmentation((views.crop_scale[0], views.crop_scale[1]), views.gain)

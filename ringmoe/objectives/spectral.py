"""Spectral-index targets (NDVI, NDWI) for reflectance modalities, from the bands the sensor registry names.

A band's role (blue, green, red, NIR) is found from its centre wavelength, so an index works for every sensor
that has the bands it needs, whatever the band is called (Sentinel-2 ``B08``, WorldView-2 ``nir``, Gaofen-2
``B4``). All sources of a modality group feed the same channel order, so the roles must sit in the same channel
for each of them. Indices assume reflectance inputs (not ``band_stats``-standardized shards).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ringmoe.core.errors import ConfigError
from ringmoe.core.sensors import SensorSpec
from ringmoe.objectives.masked import masked_l1

# Centre-wavelength ranges (nm), half-open [low, high).
BAND_ROLES: dict[str, tuple[float, float]] = {
    "blue": (430.0, 520.0),
    "green": (520.0, 600.0),
    "red": (620.0, 700.0),
    "nir": (750.0, 900.0),
}
# Normalized differences (a - b) / (a + b).
INDICES: dict[str, tuple[str, str]] = {"ndvi": ("nir", "red"), "ndwi": ("green", "nir")}


def band_roles(sensor: SensorSpec) -> dict[str, int]:
    """Role -> channel index for one source."""
    roles = {}
    for channel, name in enumerate(sensor.modality_bands):
        wavelength = sensor.band(name).wavelength_nm
        for role, (low, high) in BAND_ROLES.items():
            if wavelength is not None and low <= wavelength < high:
                roles[role] = channel
    return roles


def index_channels(modality: str, sources: list[SensorSpec], indices: list[str]) -> dict[str, tuple[int, int]]:
    """Index name -> (channel a, channel b) for a modality group, checked against every source of the group."""
    if not sources:
        raise ConfigError(f"spectral indices {indices} for {modality}: the sensor registry has no {modality} source")
    resolved: dict[str, tuple[int, int]] = {}
    for name in indices:
        a, b = INDICES[name]
        found = {}
        for sensor in sources:
            roles = band_roles(sensor)
            missing = [role for role in (a, b) if role not in roles]
            if missing:
                raise ConfigError(
                    f"objective.{modality}.{name}: source {sensor.name!r} has no {' or '.join(missing)} band "
                    f"(bands {sensor.modality_bands}; roles by wavelength {BAND_ROLES})"
                )
            found[sensor.name] = (roles[a], roles[b])
        if len(set(found.values())) > 1:
            raise ConfigError(f"objective.{modality}.{name}: sources put the bands in different channels: {found}")
        resolved[name] = next(iter(found.values()))
    return resolved


def normalized_difference(image: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``(B, 1, H, W)`` ``(x_a - x_b) / (x_a + x_b)`` in [-1, 1]; 0 where both bands are 0 (invalid pixels)."""
    first, second = image[:, a : a + 1].double(), image[:, b : b + 1].double()
    total = first + second
    value = torch.where(total > 0, (first - second) / torch.where(total > 0, total, 1.0), 0.0)
    return value.clamp(-1.0, 1.0).to(image.dtype)


def spectral_targets(image: torch.Tensor, channels: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """The enabled indices mapped from [-1, 1] to [0, 1], in the decoder's output order."""
    with torch.no_grad():
        return {name: (normalized_difference(image, a, b) + 1) / 2 for name, (a, b) in channels.items()}


@dataclass
class SpectralTerms:
    """Reflectance reconstruction plus the enabled indices, predicted in the decoder's extra channels."""

    channels: dict[str, tuple[int, int]]
    target_weight: float = 1.0

    @property
    def extra_channels(self) -> int:
        return len(self.channels)

    def __call__(self, image: torch.Tensor, prediction: torch.Tensor, pixel_mask: torch.Tensor):
        count = image.shape[1]
        terms = {"reconstruction": masked_l1(prediction[:, :count], image, pixel_mask)}
        for offset, (name, target) in enumerate(spectral_targets(image, self.channels).items()):
            terms[name] = masked_l1(prediction[:, count + offset : count + offset + 1], target, pixel_mask)
        return terms

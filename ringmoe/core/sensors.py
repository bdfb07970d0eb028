"""Sensor registry: one YAML per source under ``configs/data/sources/``, loaded into typed specs.

The registry is an explicit dict built from files the user can read; nothing registers itself at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ringmoe.core.errors import ConfigError
from ringmoe.core.modalities import MODALITIES, MODALITY_CHANNELS
from ringmoe.core.structured import from_dict, load_structured

NORMALIZATION_KINDS = ("reflectance", "db", "complex")
DERIVED_KINDS = ("db_ratio",)
FILL_KINDS = ("", "replicate")


@dataclass
class BandSpec:
    name: str
    wavelength_nm: Optional[float] = None  # centre wavelength; None for SAR bands
    gsd_m: Optional[float] = None
    polarization: Optional[str] = None  # SAR only: HH, HV, VH, VV


@dataclass
class NormalizationSpec:
    """How raw values become model inputs.

    reflectance: ``x * scale`` clipped to ``clip``; db: amplitude/intensity to dB (unless already dB), clipped to
    ``clip`` and mapped to [0, 1]; complex: real and imaginary parts times ``scale``.
    """

    kind: str = "reflectance"
    scale: float = 1.0
    clip: list[float] = field(default_factory=lambda: [0.0, 1.0])
    input_is_db: bool = False


@dataclass
class DerivedChannelSpec:
    """A model input channel computed from two bands, appended after the band channels.

    db_ratio: ``dB(bands[0]) - dB(bands[1])`` (the co/cross-polarization ratio in dB), from each band's dB value
    clipped to ``normalization.clip``, then clipped to ``clip`` and mapped linearly to [0, 1].
    """

    name: str
    kind: str
    bands: list[str]
    clip: list[float] = field(default_factory=lambda: [-10.0, 25.0])


@dataclass
class SensorSpec:
    name: str
    platform: str
    modality: str
    dtype: str
    bands: list[BandSpec]
    modality_bands: list[str]  # bands, in the modality group's channel order, that form the model input
    normalization: NormalizationSpec = field(default_factory=NormalizationSpec)
    derived_channels: list[DerivedChannelSpec] = field(default_factory=list)
    nodata: Optional[float] = None
    gsd_m: Optional[float] = None
    license: str = ""
    description: str = ""
    # A sensor with fewer bands than its modality has channels (panchromatic, single-pol SAR): "replicate"
    # repeats its channels in order until the modality's count is reached ("" = the bands must fill it).
    fill_channels: str = ""

    def band_channels(self) -> int:
        """Channels the bands give: complex bands become an I and a Q channel each; derived channels follow."""
        per_band = 2 if self.normalization.kind == "complex" else 1
        return per_band * len(self.modality_bands) + len(self.derived_channels)

    def channels(self) -> int:
        """Model input channels: the band channels, repeated to the modality's count under ``replicate``."""
        return MODALITY_CHANNELS[self.modality] if self.fill_channels == "replicate" else self.band_channels()

    def band(self, name: str) -> BandSpec:
        for band in self.bands:
            if band.name == name:
                return band
        raise ConfigError(f"sensor {self.name!r} has no band {name!r}; bands: {[b.name for b in self.bands]}")


class SensorRegistry(dict[str, SensorSpec]):
    """Source name -> spec."""

    def by_modality(self, modality: str) -> list[SensorSpec]:
        return [spec for spec in self.values() if spec.modality == modality]

    def get_spec(self, name: str) -> SensorSpec:
        if name not in self:
            raise ConfigError(
                f"unknown source {name!r}; registered sources: {sorted(self)} (a sensor of your own: a YAML in a "
                "directory listed under extra_sources)"
            )
        return self[name]


def load_sensor(path: Path) -> SensorSpec:
    """Read and validate one source YAML; errors name the file and the key."""
    spec = load_structured(SensorSpec, path)
    _validate(spec, path)
    return spec


def _validate(spec: SensorSpec, path: Path) -> None:
    if spec.modality not in MODALITIES:
        raise ConfigError(f"{path}: modality {spec.modality!r} is not one of {MODALITIES}")
    if spec.normalization.kind not in NORMALIZATION_KINDS:
        raise ConfigError(f"{path}: normalization.kind {spec.normalization.kind!r} not in {NORMALIZATION_KINDS}")
    if spec.fill_channels not in FILL_KINDS:
        raise ConfigError(f"{path}: fill_channels {spec.fill_channels!r} not in {FILL_KINDS}")
    want, have = MODALITY_CHANNELS[spec.modality], spec.band_channels()
    if have > want or (have < want and spec.fill_channels != "replicate"):
        hint = (
            "; a sensor with fewer bands (panchromatic, single-pol) sets fill_channels: replicate"
            if have < want
            else ""
        )
        raise ConfigError(f"{path}: modality_bands give {have} channels, modality {spec.modality!r} needs {want}{hint}")
    if len(set(spec.modality_bands)) != len(spec.modality_bands):
        raise ConfigError(
            f"{path}: modality_bands {spec.modality_bands} list a band twice; use fill_channels: replicate"
        )
    names = {b.name for b in spec.bands}
    missing = [b for b in spec.modality_bands if b not in names]
    if missing:
        raise ConfigError(f"{path}: modality_bands {missing} are not listed under bands")
    for index, derived in enumerate(spec.derived_channels):
        where = f"{path}: derived_channels[{index}] ({derived.name!r})"
        if derived.kind not in DERIVED_KINDS:
            raise ConfigError(f"{where}: kind {derived.kind!r} not in {DERIVED_KINDS}")
        if spec.normalization.kind != "db":
            raise ConfigError(f"{where}: {derived.kind} needs normalization.kind 'db', not {spec.normalization.kind!r}")
        if len(derived.bands) != 2 or any(b not in spec.modality_bands for b in derived.bands):
            raise ConfigError(f"{where}: bands {derived.bands} must be two of modality_bands {spec.modality_bands}")
        if len(derived.clip) != 2 or derived.clip[1] <= derived.clip[0]:
            raise ConfigError(f"{where}: clip {derived.clip} must be [low, high] with low < high")


def default_sources_dir() -> Path:
    """The built-in sources: ``ringmoe/core/sources``, a link to the checkout's ``configs/data/sources`` in an
    editable install and a copy of its files in a wheel."""
    return Path(__file__).resolve().parent / "sources"


def load_registry(directory: str | Path | None = None, extra: Sequence[str | Path] = ()) -> SensorRegistry:
    """The sources of ``directory`` (default: the built-ins) plus those of each ``extra`` directory; a name
    defined twice is an error naming both files."""
    directory = Path(directory) if directory else default_sources_dir()
    registry = SensorRegistry()
    origin: dict[str, Path] = {}
    for folder in [directory, *(Path(e) for e in extra)]:
        files = sorted(folder.glob("*.yaml"))
        if not files:
            raise ConfigError(f"no source YAML files found in {folder}")
        for path in files:
            spec = load_sensor(path)
            if spec.name in registry:
                raise ConfigError(f"{path}: source {spec.name!r} is already defined by {origin[spec.name]}")
            registry[spec.name] = spec
            origin[spec.name] = path
    return registry


def registry_from_records(records: Any, where: str) -> SensorRegistry:
    """The registry a manifest recorded (source name -> spec as plain data), validated like the YAML files."""
    if not isinstance(records, dict) or not records:
        raise ConfigError(f"{where}: 'sensors' must map source names to specs, got {records!r:.200}")
    registry = SensorRegistry()
    for name, record in sorted(records.items()):
        at = f"{where}: sensors.{name}"
        spec = from_dict(SensorSpec, record, at) if isinstance(record, dict) else None
        if spec is None or spec.name != name:
            raise ConfigError(f"{at}: not a sensor spec named {name!r}")
        _validate(spec, Path(at))
        registry[name] = spec
    return registry

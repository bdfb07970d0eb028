"""How a tile's pixels are stored in a shard, and how a reader turns them back into model input.

Two encodings of a tile (a single image, one part of a pair, or a sequence's stack):

- ``source`` (the default of ``ringmoe-data build``): ``image.npy`` holds the raw bands in the file's own dtype
  (uint8/uint16/int16/float32/complex64, ``(B, H, W)`` or ``(T, B, H, W)``), invalid pixels set to 0, and
  ``valid.npy`` the valid mask packed 8 pixels to a byte along the width (``numpy.packbits``). The reader
  normalizes with the sensor spec and per-channel statistics the manifest recorded, through the same
  ``normalize_valid`` the ingest uses, so the values equal a ``float32`` build's bit for bit. The sample's JSON
  says ``"encoding": "source"`` (a pair's part says it in its ``parts`` entry), and ``band_offsets`` when the
  product adds a radiometric offset per band before the scale (Sentinel-2 processing baseline >= 04.00).
- ``float32`` (no ``encoding`` key; every shard before this format): the normalized float32 ``(C, H, W)``
  image and an unpacked uint8 mask. Resampled pair and sequence parts (warped to the reference grid, so no
  longer in the source's values) are always stored this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.normalization import normalize_valid
from ringmoe.core.sensors import SensorSpec, load_registry, registry_from_records

SOURCE_ENCODING = "source"
FLOAT32_ENCODING = "float32"
ENCODINGS = (SOURCE_ENCODING, FLOAT32_ENCODING)
# Dtypes a raster holds natively; anything else (float64 from declared scaling, complex128) is not worth keeping.
SOURCE_DTYPES = frozenset(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "complex64")
)


def keeps_source(raw: np.ndarray, encoding: str) -> bool:
    """Whether ``raw`` is stored as is under the build's ``encoding``."""
    return encoding == SOURCE_ENCODING and raw.dtype in SOURCE_DTYPES


def stored_raw(raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``raw`` with its invalid pixels 0 (no NaN in a shard; constant fill compresses): ``valid`` is ``raw``'s
    shape without the band axis."""
    out = np.array(raw, copy=True)
    np.moveaxis(out, -3, 0)[:, ~valid.astype(bool)] = 0
    return out


def pack_valid(valid: np.ndarray) -> np.ndarray:
    return np.packbits(valid.astype(bool), axis=-1)


def unpack_valid(packed: np.ndarray, width: int) -> np.ndarray:
    """uint8 0/1 mask of ``width`` columns; a packed array of the wrong width is a ``ValueError``."""
    if packed.dtype != np.uint8 or packed.ndim < 2 or packed.shape[-1] != -(-width // 8):
        raise ValueError(f"packed valid mask is {packed.dtype} {packed.shape}, expected uint8 (..., {-(-width // 8)})")
    return np.unpackbits(packed, axis=-1, count=width)


@dataclass(frozen=True)
class TileDecoder:
    """Turns one source's ``source``-encoded tiles into its model input."""

    sensor: SensorSpec
    standardize: Optional[Sequence[Sequence[float]]] = None

    def image(
        self,
        raw: np.ndarray,
        packed_valid: np.ndarray,
        offsets: Optional[Sequence[float]] = None,
        out: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """float32 ``(C, H, W)`` (or ``(T, C, H, W)`` from ``(T, B, H, W)``); a malformed tile is a ``ValueError``.
        ``offsets``: the per-band radiometric offsets the sample's JSON records (``band_offsets``); ``out``: a
        float32 ``(C, H, W)`` array to decode a single tile into."""
        bands = len(self.sensor.modality_bands)
        if raw.ndim not in (3, 4) or raw.shape[-3] != bands or raw.dtype not in SOURCE_DTYPES:
            raise ValueError(f"raw tile is {raw.dtype} {raw.shape}, expected {bands} bands of a source dtype")
        valid = unpack_valid(packed_valid, raw.shape[-1])
        if valid.shape != raw.shape[:-3] + raw.shape[-2:]:
            raise ValueError(f"valid mask {valid.shape} does not fit the raw tile {raw.shape}")
        if offsets is not None and (not isinstance(offsets, list) or len(offsets) != bands):
            raise ValueError(f"band_offsets {offsets!r:.80} is not a list of {bands} numbers")
        if out is not None and (raw.ndim != 3 or out.shape != (self.sensor.channels(), *raw.shape[-2:])):
            raise ValueError(f"raw tile {raw.shape} does not decode into {out.shape}")
        return normalize_valid(raw, valid, self.sensor, self.standardize, offsets, out)


def tile_decoders(manifest: dict[str, Any], sensors: Mapping[str, SensorSpec]) -> dict[str, TileDecoder]:
    """A decoder per sensor of a dataset, with the per-channel statistics the manifest says its tiles were
    standardized with."""
    standardized: dict[str, Any] = {}
    for section in (manifest.get("streams") or {}).values():
        if isinstance(section, dict) and isinstance(section.get("standardized"), dict):
            standardized.update(section["standardized"])
    return {name: TileDecoder(spec, standardized.get(name)) for name, spec in sensors.items()}


def manifest_decoders(manifest: dict[str, Any], where: str = "manifest.json") -> dict[str, TileDecoder]:
    """``tile_decoders`` of the sensor specs the manifest records (the built-ins for a format 2 manifest)."""
    records = manifest.get("sensors")
    try:
        sensors = registry_from_records(records, where) if records is not None else load_registry()
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    return tile_decoders(manifest, sensors)


def normalized_arrays(arrays: Mapping[str, np.ndarray], meta: dict, decoders: Mapping[str, TileDecoder]) -> dict:
    """One sample's ``.npy`` members (ext -> array, e.g. a webdataset sample) as a float32 build holds them:
    source-encoded images normalized, their masks unpacked; everything else as given."""
    out = dict(arrays)
    if meta.get("kind") == "pair":
        parts = [(f"{name}.", name, info) for name, info in (meta.get("parts") or {}).items()]
    else:
        parts = [("", meta.get("source"), meta)]
    for prefix, sensor, info in parts:
        encoding = info.get("encoding")
        if encoding is None:
            continue
        if encoding != SOURCE_ENCODING or sensor not in decoders:
            raise ValueError(f"{prefix}image.npy: encoding {encoding!r} of sensor {sensor!r} cannot be decoded")
        raw, packed = arrays[prefix + "image.npy"], arrays[prefix + "valid.npy"]
        out[prefix + "image.npy"] = decoders[sensor].image(raw, packed, info.get("band_offsets"))
        out[prefix + "valid.npy"] = unpack_valid(packed, raw.shape[-1])
    return out

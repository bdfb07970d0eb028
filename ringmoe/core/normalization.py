"""Raw band values -> normalized float32 model input plus a per-pixel valid mask.

Kinds (``SensorSpec.normalization.kind``):

- ``reflectance``: ``x * scale`` clipped to ``clip``.
- ``db``: dB input (``input_is_db``) is used as is; otherwise the input is taken as linear *amplitude*
  (``scale`` applied first as a calibration factor) and converted with ``20 * log10`` (an intensity/power
  product would need ``10 * log10``). The dB value is clipped to ``clip`` and mapped linearly to [0, 1].
- ``complex``: each complex band becomes an I (real) and a Q (imaginary) channel, channel order
  ``HH_I, HH_Q, HV_I, HV_Q, ...``, each ``* scale`` and clipped to ``clip``.

Derived channels (``SensorSpec.derived_channels``) follow the band channels; ``db_ratio`` is the difference
of two bands' clipped dB values (e.g. VV - VH), clipped to its own ``clip`` and mapped to [0, 1].

A pixel is valid when every band is finite and differs from the source's ``nodata`` and the file's declared
nodata; complex pixels also need a magnitude > 0; linear amplitude for ``db`` must be >= 0. Invalid pixels are
0 in the image, so no NaN ever reaches a shard.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from ringmoe.core.errors import ConfigError
from ringmoe.core.sensors import SensorSpec


def channel_names(sensor: SensorSpec) -> list[str]:
    derived = [d.name for d in sensor.derived_channels]
    if sensor.normalization.kind == "complex":
        names = [f"{band}_{part}" for band in sensor.modality_bands for part in ("I", "Q")] + derived
    else:
        names = list(sensor.modality_bands) + derived
    return [names[i % len(names)] for i in range(sensor.channels())]  # fill_channels: replicate repeats them


def valid_mask(
    raw: np.ndarray,
    sensor: SensorSpec,
    file_nodata: Sequence[Optional[float]] = (),
    invalid: Optional[np.ndarray] = None,
) -> np.ndarray:
    """``(H, W)`` bool: True where every band of ``raw`` ``(B, H, W)`` holds data and ``invalid`` (``(H, W)``
    bool of extra invalid pixels: clouds) is not set."""
    valid = _holds_data(raw, sensor, file_nodata)
    if invalid is not None:
        valid &= ~invalid
    return valid


def _holds_data(raw: np.ndarray, sensor: SensorSpec, file_nodata: Sequence[Optional[float]]) -> np.ndarray:
    kind = sensor.normalization.kind
    if kind == "complex":
        # Complex rasters carry no nodata value; zero magnitude is the fill of SLC products.
        ok = np.isfinite(raw.real) & np.isfinite(raw.imag) & (np.abs(raw) > 0)
        return ok.all(axis=0)
    ok = np.isfinite(raw)
    if sensor.nodata is not None:
        ok &= raw != sensor.nodata
    for band, nodata in enumerate(file_nodata):
        if nodata is not None and not np.isnan(nodata):
            ok[band] &= raw[band] != nodata
    if kind == "db" and not sensor.normalization.input_is_db:
        ok &= raw >= 0  # negative amplitude is not a measurement
    return ok.all(axis=0)


def normalize(
    raw: np.ndarray,
    sensor: SensorSpec,
    file_nodata: Sequence[Optional[float]] = (),
    invalid: Optional[np.ndarray] = None,
    standardize: Optional[Sequence[Sequence[float]]] = None,
    offsets: Optional[Sequence[float]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``raw`` ``(B, H, W)`` -> image float32 ``(C, H, W)`` and valid uint8 ``(H, W)``.

    ``invalid``: ``(H, W)`` bool of extra invalid pixels (clouds); ``standardize``: per-channel ``[mean, std]``
    (from ``ringmoe-data stats``) applied after the kind's normalization; ``offsets``: see ``normalize_valid``.
    """
    valid = valid_mask(raw, sensor, file_nodata, invalid)
    return normalize_valid(raw, valid, sensor, standardize, offsets), valid.astype(np.uint8)


def normalize_valid(
    raw: np.ndarray,
    valid: np.ndarray,
    sensor: SensorSpec,
    standardize: Optional[Sequence[Sequence[float]]] = None,
    offsets: Optional[Sequence[float]] = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The float32 ``(C, H, W)`` model input of ``raw`` ``(B, H, W)`` whose valid pixels are ``valid``
    ``(H, W)``; invalid pixels are 0. The ingest and the loader of source-dtype shards both normalize here.

    ``offsets``: per band, added to the stored values before the scale (a product's radiometric offset, e.g.
    Sentinel-2 processing baseline >= 04.00: reflectance = (DN - 1000) / 10000); reflectance sources only.
    A stack ``(T, B, H, W)`` with masks ``(T, H, W)`` is normalized step by step into ``(T, C, H, W)``.
    ``out``: a float32 ``(C, H, W)`` array to write into (a batch's slot), returned.
    """
    if raw.ndim == 4:
        return np.stack([normalize_valid(r, v, sensor, standardize, offsets) for r, v in zip(raw, valid)])
    norm = sensor.normalization
    lo, hi = (float(v) for v in norm.clip)
    if offsets is not None and norm.kind != "reflectance":
        raise ConfigError(f"source {sensor.name!r}: band offsets apply to reflectance sources, not {norm.kind!r}")
    # float64 arithmetic rounded once to float32, plane by plane: a plane's temporaries stay in cache, and
    # per-plane scalars avoid numpy's slow broadcast of (C, 1, 1) operands (8x the time of the whole rest).
    planes = list(_kind_planes(raw, sensor, lo, hi, offsets))
    image = np.empty((sensor.channels(), *raw.shape[-2:]), np.float32) if out is None else out
    scratch = np.empty(raw.shape[-2:], np.float64) if standardize is not None else None
    for channel in range(len(image)):
        plane = planes[channel % len(planes)]  # fill_channels: replicate (a panchromatic or single-pol sensor)
        if standardize is not None:
            mean, std = standardize[0][channel], standardize[1][channel]
            plane = np.subtract(plane, mean, out=scratch)
            if std > 0:
                plane /= std
        image[channel] = plane
    invalid = ~valid.astype(bool)
    if invalid.any():
        np.copyto(image, 0.0, where=invalid)  # +0.0 like a masked assignment, without its gather
    return image


def _kind_planes(
    raw: np.ndarray, sensor: SensorSpec, lo: float, hi: float, offsets: Optional[Sequence[float]]
) -> Iterator[np.ndarray]:
    """The normalization kind's float64 ``(H, W)`` channels of ``raw`` ``(B, H, W)``, before standardizing."""
    norm = sensor.normalization
    if norm.kind == "reflectance":
        for band, values in enumerate(raw):
            if offsets is not None:
                plane = values.astype(np.float64)
                plane += offsets[band]
                plane *= norm.scale
            else:
                plane = np.multiply(values, norm.scale, dtype=np.float64)
            yield np.clip(plane, lo, hi, out=plane)
    elif norm.kind == "db":
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # log10(0) = -inf, then clipped
            yield from _to_unit_db(raw, sensor, lo, hi)
    elif norm.kind == "complex":
        for values in raw:  # I, Q per band
            for part in (values.real, values.imag):
                plane = np.multiply(part, norm.scale, dtype=np.float64)
                yield np.clip(plane, lo, hi, out=plane)
    else:
        raise ConfigError(f"source {sensor.name!r}: unknown normalization kind {norm.kind!r}")


def _to_unit_db(raw: np.ndarray, sensor: SensorSpec, lo: float, hi: float) -> np.ndarray:
    norm = sensor.normalization
    if hi <= lo:
        raise ConfigError(f"source {sensor.name!r}: normalization.clip {norm.clip} must be increasing for db")
    if norm.input_is_db:
        if norm.scale != 1.0:
            raise ConfigError(f"source {sensor.name!r}: normalization.scale must be 1.0 when input_is_db is true")
        db = raw.astype(np.float64)
    else:
        db = 20.0 * np.log10(raw.astype(np.float64) * norm.scale)  # amplitude; 0 -> -inf -> clipped to lo
    db = np.clip(db, lo, hi)  # clipped first, so a ratio of a zero-amplitude pixel is finite
    channels = [(db - lo) / (hi - lo)]
    for derived in sensor.derived_channels:
        first, second = (sensor.modality_bands.index(b) for b in derived.bands)
        d_lo, d_hi = (float(v) for v in derived.clip)
        ratio = np.clip(db[first] - db[second], d_lo, d_hi)
        channels.append(((ratio - d_lo) / (d_hi - d_lo))[None])
    return np.concatenate(channels, axis=0)

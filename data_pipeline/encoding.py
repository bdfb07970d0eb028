"""How a file encodes the values a source's normalization expects, checked before any tile is read.

A source's ``dtype`` is the encoding its normalization assumes (Sentinel-2 uint16 DN times 1e-4, Sentinel-1
float32 dB). A file in another encoding would be normalized into garbage that passes every later check (8-bit
SAR amplitude read as dB is 68 % ones), so a mismatch is an error naming file, source, expected and found,
unless the input declares ``scaling``: the file's dtype and the map from its values to the source's units,
``value = DN * scale + offset``, then optionally amplitude or power to dB. Floats of any width hold the same
units and match each other; integers must match exactly, since the bit depth is part of the encoding.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from data_pipeline.config import ScalingSpec
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import SensorSpec


def _same_encoding(found: np.dtype, expected: np.dtype) -> bool:
    if found.kind in "fc" or expected.kind in "fc":
        return found.kind == expected.kind
    return found == expected


def check_encoding(
    where: str,
    band: int,
    found: str,
    file_scale: float,
    file_offset: float,
    sensor: SensorSpec,
    scaling: Optional[ScalingSpec],
) -> None:
    """Raise when band ``band`` of ``where`` (dtype ``found``, GDAL scale/offset metadata) is not what the
    source, or the input's declared ``scaling``, expects."""
    expected = np.dtype(scaling.dtype if scaling is not None else sensor.dtype)
    if not _same_encoding(np.dtype(found), expected):
        declared = f"source {sensor.name!r}" if scaling is None else f"the input's scaling (source {sensor.name!r})"
        raise DataError(
            f"{where}: band {band} is {found}, {declared} expects {expected}; declare the file's encoding with "
            "the input's `scaling` (dtype, scale, offset, to_db) or use a source whose dtype matches"
        )
    if scaling is None and (file_scale != 1.0 or file_offset != 0.0):
        # CF packing (scale_factor / add_offset) or GDAL scale metadata: the stored integers are not the values.
        raise DataError(
            f"{where}: band {band} declares scale {file_scale} and offset {file_offset} (packed values); source "
            f"{sensor.name!r} expects raw {expected}: set the input's `scaling` to say how the values map to it"
        )


def apply_scaling(raw: np.ndarray, scaling: ScalingSpec) -> np.ndarray:
    """The file's values in the source's units (float64); non-positive values under ``to_db`` become -inf."""
    values = raw.astype(np.float64) * scaling.scale + scaling.offset
    if scaling.to_db:
        factor = 20.0 if scaling.to_db == "amplitude" else 10.0
        with np.errstate(divide="ignore", invalid="ignore"):
            values = factor * np.log10(np.where(values > 0, values, 0.0))
    return values


def scaled_nodata(values: Sequence[Optional[float]], scaling: ScalingSpec) -> list[Optional[float]]:
    """The file's nodata values mapped exactly as its pixels are, so a nodata pixel still equals its marker."""
    return [None if value is None else float(apply_scaling(np.array([value]), scaling)[0]) for value in values]

"""Reproject the raw bands of a scene onto another scene's tile grid (co-registration with ``rasterio.warp``).

Invalid pixels (nodata, NaN, zero-magnitude complex) become NaN before warping and are excluded from the
resampling kernel, so no fill value leaks into a neighbour; pixels with no source coverage come out NaN too and
are therefore invalid after normalization. Complex bands are warped as separate real and imaginary planes with
nearest resampling: interpolating phase is meaningless.
"""

from __future__ import annotations

import math

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from data_pipeline.read import band_offsets
from ringmoe.core.normalization import valid_mask
from ringmoe.core.sensors import SensorSpec

# Source pixels read around the footprint so that the resampling kernel has its neighbours at the edges.
MARGIN_PX = 2


def warp_tile(reader, sensor: SensorSpec, dst_transform: Affine, dst_crs: str, size: int, resampling: str):
    """Raw bands of ``reader`` resampled onto a ``size`` x ``size`` tile at ``dst_transform``/``dst_crs``.

    Returns ``(B, size, size)`` float64 (complex128 for complex sources) with NaN where nothing valid maps.
    """
    complex_data = sensor.normalization.kind == "complex"
    bands = len(sensor.modality_bands)
    out_dtype = np.complex128 if complex_data else np.float64
    empty = np.full((bands, size, size), np.nan, dtype=out_dtype)

    left, top = dst_transform @ (0, 0)
    right, bottom = dst_transform @ (size, size)
    src_crs = CRS.from_user_input(reader.crs) if reader.crs else None
    dst = CRS.from_user_input(dst_crs) if dst_crs else None
    if src_crs is None or dst is None:
        raise ValueError("both grids need a CRS to be co-registered")
    bounds = transform_bounds(dst, src_crs, min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    window = _clip(from_bounds(*bounds, transform=reader.transform), reader.shape)
    if window is None:
        return empty
    raw = reader.read(window)
    ok = valid_mask(raw, sensor, reader.file_nodata(), reader.invalid(window))
    offsets = band_offsets(reader)
    if offsets is not None:  # a product's radiometric offsets, added before resampling (values, not codes)
        raw = raw.astype(np.float64) + np.asarray(offsets, dtype=np.float64)[:, None, None]
    src_transform = reader.transform @ Affine.translation(window.col_off, window.row_off)
    method = Resampling.nearest if complex_data else Resampling[resampling]
    planes = [raw.real, raw.imag] if complex_data else [raw]
    warped = []
    for plane in planes:
        source = plane.astype(np.float64)
        source[:, ~ok] = np.nan
        target = np.full((bands, size, size), np.nan, dtype=np.float64)
        reproject(
            source,
            target,
            src_transform=src_transform,
            src_crs=src_crs,
            src_nodata=np.nan,
            dst_transform=dst_transform,
            dst_crs=dst,
            dst_nodata=np.nan,
            resampling=method,
        )
        warped.append(target)
    if complex_data:
        return warped[0] + 1j * warped[1]
    return warped[0]


def _clip(window: Window, shape: tuple[int, int]):
    """``window`` grown by the margin, snapped to whole pixels and clipped to the raster; None if outside."""
    row0 = max(0, math.floor(window.row_off) - MARGIN_PX)
    col0 = max(0, math.floor(window.col_off) - MARGIN_PX)
    row1 = min(shape[0], math.ceil(window.row_off + window.height) + MARGIN_PX)
    col1 = min(shape[1], math.ceil(window.col_off + window.width) + MARGIN_PX)
    if row1 <= row0 or col1 <= col0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)

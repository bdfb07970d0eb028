"""eo-learn EOPatch arrays -> one GeoTIFF per date, so the multi-date stack ingests like any other time series.

An EOPatch keeps a (time, height, width, bands) reflectance array as ``.npy`` (read with ``allow_pickle=False``),
its dates in ``timestamps.json`` and its grid in ``bbox.geojson`` (a UTM polygon; row 0 is north). Each date
becomes ``<prefix>_<YYYYmmddTHHMMSS>.tif``: uint16 digital numbers (reflectance x 10000, the L1C product's own
encoding, so the ``sentinel2_l1c`` source normalizes them unchanged), 0 as nodata, one band per array band with
its name as the band description. With a validity mask (``mask/IS_VALID.npy``: time x H x W x 1, True = clear)
each date also gets ``masks/<same name>.tif`` (1 = invalid: clouds, no data), which a build config names as the
input's ``invalid_mask: "masks/{scene}.tif"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.transform import from_bounds

from ringmoe.core.errors import DataError
from ringmoe.core.files import atomic_write_bytes

L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
DN_PER_REFLECTANCE = 10000.0


def _grid(bbox_file: Path, height: int, width: int) -> tuple[str, object]:
    try:
        shape = json.loads(bbox_file.read_text())
        xs, ys = zip(*shape["coordinates"][0])
        crs_name = shape.get("crs", {}).get("properties", {}).get("name", "")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{bbox_file}: not an EOPatch bbox polygon ({exc!r})") from None
    epsg = re.search(r"EPSG:+(\d+)", crs_name)
    if not epsg:
        raise DataError(f"{bbox_file}: no EPSG code in its crs {crs_name!r}")
    return f"EPSG:{epsg.group(1)}", from_bounds(min(xs), min(ys), max(xs), max(ys), width, height)


def eopatch_to_geotiffs(
    bands_file: Path,
    timestamps_file: Path,
    bbox_file: Path,
    out_dir: Path,
    frame_dates: Optional[Sequence[int]] = None,
    band_names: Sequence[str] = L1C_BANDS,
    prefix: str = "eopatch",
    valid_file: Optional[Path] = None,
) -> list[Path]:
    """``frame_dates[k]``: the timestamps index of frame k (default: frame k is date k); ``valid_file``: the
    EOPatch's per-date validity, indexed by timestamps like ``frame_dates``."""
    try:
        stack = np.load(bands_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{bands_file}: not a plain .npy array ({exc})") from None
    if stack.ndim != 4 or stack.shape[-1] != len(band_names):
        raise DataError(f"{bands_file}: shape {stack.shape}, expected (time, height, width, {len(band_names)} bands)")
    try:
        stamps = json.loads(timestamps_file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{timestamps_file}: cannot read the EOPatch timestamps ({exc})") from None
    frames = list(frame_dates) if frame_dates is not None else list(range(len(stack)))
    if len(frames) != len(stack) or max(frames) >= len(stamps) or min(frames) < 0:
        raise DataError(f"{bands_file}: {len(stack)} frames, frame_dates {frames}, {len(stamps)} timestamps")
    if not np.isfinite(stack).all():
        raise DataError(f"{bands_file}: holds NaN/inf reflectance")
    crs, transform = _grid(bbox_file, stack.shape[1], stack.shape[2])
    valid = None
    if valid_file is not None:
        valid = np.load(valid_file, allow_pickle=False)
        if valid.shape[:3] != (len(stamps), *stack.shape[1:3]):
            raise DataError(
                f"{valid_file}: shape {valid.shape}, expected ({len(stamps)}, {stack.shape[1]}, {stack.shape[2]}, 1)"
            )
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for frame, index in enumerate(frames):
        when = re.sub(r"[-:]", "", stamps[index])[:15]
        dn = np.clip(np.round(stack[frame] * DN_PER_REFLECTANCE), 1, 65535).astype(np.uint16).transpose(2, 0, 1)
        path = out_dir / f"{prefix}_{when}.tif"
        _write_tif(path, dn, crs, transform, band_names, nodata=0)
        if valid is not None:
            invalid = (~valid[index].reshape(stack.shape[1:3]).astype(bool)).astype(np.uint8)[None]
            _write_tif(out_dir / "masks" / path.name, invalid, crs, transform, ["invalid"], nodata=None)
        written.append(path)
    return written


def _write_tif(path: Path, data: np.ndarray, crs: str, transform, names: Sequence[str], nodata) -> None:
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=data.dtype)
    with rasterio.MemoryFile() as memory:
        with memory.open(crs=crs, transform=transform, nodata=nodata, **profile) as dataset:
            dataset.write(data)
            dataset.descriptions = tuple(names)
        atomic_write_bytes(path, memory.read())

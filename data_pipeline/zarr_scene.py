"""Read scenes stored as zarr arrays (datacubes, time series) with the same interface as the GeoTIFF reader.

The array's axes are named by the input's ``dims`` (``band``, ``y``, ``x`` and optionally ``time``, any
order). Georeferencing and band names come from attributes of the array (or, failing that, its group):

- ``crs`` (e.g. ``"EPSG:32633"``) and ``transform`` (6 affine terms ``a, b, c, d, e, f``, rasterio order);
- ``band_names``: the band of each position on the ``band`` axis; modality bands are picked by name (or by
  the input's ``band_indexes``, 1-based), so a cube may hold more bands than a modality uses;
- ``timestamps`` (ISO 8601, one per ``time`` step) for time cubes; ``nodata`` optionally.

An invalid mask is another array of the store (``invalid_mask``) with the same axes minus ``band``. A time cube
is read whole (``read_sequence``) unless the input picks one step (``time_index``); then it reads like an image.
Works for zarr v3 and v2 stores alike (``zarr.open`` tells them apart).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import zarr
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.windows import Window

from data_pipeline.encoding import check_encoding
from data_pipeline.scene import Scene
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import SensorSpec


class ZarrSceneReader:
    def __init__(self, scene: Scene, sensor: SensorSpec) -> None:
        self.scene = scene
        self.sensor = sensor
        self.dims = tuple(scene.dims)
        where = f"{scene.path}" + (f" (array {scene.array!r})" if scene.array else "")
        self._where = where
        root = _open(scene.path, where)
        self._array = _pick_array(root, scene.array, where)
        self._attrs = {**dict(getattr(root, "attrs", {})), **dict(self._array.attrs)}
        if self._array.ndim != len(self.dims):
            raise DataError(f"{where}: array has {self._array.ndim} axes, dims {list(self.dims)} name {len(self.dims)}")
        self._crs = self._parse_crs(self._attr("crs"))
        self._transform = self._parse_transform(self._attr("transform"))
        self._indexes = self._band_positions()
        self._check_dtype()
        # timestamps: every step of a cube read whole (None for an image or one picked step); time: the step
        # picked by time_index (None otherwise).
        self.timestamps: Optional[list[str]] = None
        self.time: Optional[str] = None
        self._time_index = scene.time_index
        if "time" in self.dims:
            stamps = self._parse_timestamps(self._array.shape[self.dims.index("time")])
            if self._time_index is None:
                self.timestamps = stamps
            elif not 0 <= self._time_index < len(stamps):
                raise DataError(f"{where}: time_index {self._time_index} is outside the {len(stamps)} time steps")
            else:
                self.time = stamps[self._time_index]
        self._mask = None
        if scene.array_mask:
            self._mask = _pick_array(root, scene.array_mask, f"{scene.path} (mask array {scene.array_mask!r})")
            want = tuple(n for d, n in zip(self.dims, self._array.shape) if d != "band")
            if tuple(self._mask.shape) != want:
                got = tuple(self._mask.shape)
                raise DataError(f"{scene.path}: mask array {scene.array_mask!r} has shape {got}, expected {want}")

    def _attr(self, name: str) -> Any:
        if name not in self._attrs:
            raise DataError(f"{self._where}: attribute {name!r} missing; zarr scenes need 'crs' and 'transform'")
        return self._attrs[name]

    def _parse_crs(self, value: Any) -> str:
        try:
            return CRS.from_user_input(value).to_string()
        except (CRSError, TypeError, ValueError) as exc:
            raise DataError(f"{self._where}: attribute 'crs' {value!r} is not a CRS ({exc})") from None

    def _parse_transform(self, terms: Any) -> Affine:
        """6 terms ``a, b, c, d, e, f`` (or all 9 of the matrix, last row ``0, 0, 1``) in rasterio order."""
        try:
            values = [float(v) for v in terms]
        except (TypeError, ValueError):
            values = []
        if len(values) not in (6, 9) or (len(values) == 9 and values[6:] != [0.0, 0.0, 1.0]):
            raise DataError(f"{self._where}: attribute 'transform' must list 6 affine terms a..f, got {terms!r}")
        transform = Affine(*values[:6])
        if transform.determinant == 0:
            raise DataError(f"{self._where}: attribute 'transform' {values[:6]} is degenerate (zero pixel size)")
        return transform

    def _parse_timestamps(self, steps: int) -> list[str]:
        stamps = self._attrs.get("timestamps")
        if not isinstance(stamps, list) or len(stamps) != steps:
            raise DataError(f"{self._where}: a time cube needs attribute 'timestamps' with {steps} entries")
        for stamp in stamps:
            try:
                datetime.fromisoformat(str(stamp))
            except ValueError:
                raise DataError(f"{self._where}: timestamp {stamp!r} is not ISO 8601") from None
        return [str(s) for s in stamps]

    def _band_positions(self) -> list[int]:
        """0-based positions on the band axis of the modality bands, in modality order."""
        count = self._array.shape[self.dims.index("band")]
        bands = self.sensor.modality_bands
        if self.scene.indexes:
            positions = [i - 1 for i in self.scene.indexes]
        elif "band_names" in self._attrs:
            names = list(self._attrs["band_names"])
            missing = [b for b in bands if b not in names]
            if missing:
                source = self.sensor.name
                raise DataError(f"{self._where}: band_names {names} lack modality bands {missing} of {source!r}")
            positions = [names.index(b) for b in bands]
        elif count == len(bands):
            positions = list(range(count))
        else:
            raise DataError(
                f"{self._where}: expected {len(bands)} bands {bands} for source {self.sensor.name!r}, found {count} "
                "(add a 'band_names' attribute or set band_indexes)"
            )
        bad = [p + 1 for p in positions if not 0 <= p < count]
        if bad:
            raise DataError(f"{self._where}: band index {bad} out of range, the band axis has {count}")
        return positions

    def _check_dtype(self) -> None:
        complex_wanted = self.sensor.normalization.kind == "complex"
        if (np.dtype(self._array.dtype).kind == "c") != complex_wanted:
            want = "complex" if complex_wanted else "real"
            raise DataError(f"{self._where}: dtype {self._array.dtype}, source {self.sensor.name!r} needs {want} data")
        # xarray writes CF packing as array attributes; the stored integers are not the values then.
        scale = float(self._array.attrs.get("scale_factor", 1.0))
        offset = float(self._array.attrs.get("add_offset", 0.0))
        check_encoding(self._where, 1, str(self._array.dtype), scale, offset, self.sensor, self.scene.scaling)

    @property
    def shape(self) -> tuple[int, int]:
        return self._array.shape[self.dims.index("y")], self._array.shape[self.dims.index("x")]

    @property
    def crs(self) -> str:
        return self._crs

    @property
    def transform(self) -> Affine:
        return self._transform

    def file_nodata(self) -> list[Optional[float]]:
        nodata = self._attrs.get("nodata")
        return [None if nodata is None else float(nodata)] * len(self._indexes)

    def _read_block(self, array, dims: tuple[str, ...], window: Window) -> tuple[np.ndarray, list[str]]:
        """The window of ``array`` (axes ``dims``) and the axes it still has: a picked time step drops one."""
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        time = slice(None) if self._time_index is None else self._time_index
        by_dim = {"y": rows, "x": cols, "band": slice(None), "time": time}
        kept = [d for d in dims if not (d == "time" and self._time_index is not None)]
        return self._get(array, tuple(by_dim[d] for d in dims)), kept

    def read(self, window: Window) -> np.ndarray:
        """Raw modality bands ``(B, h, w)`` of an image (or of the step ``time_index`` picks)."""
        if self.timestamps is not None:
            raise DataError(
                f"{self._where}: a time cube has no single image; list it under `sequences` or set time_index"
            )
        block, dims = self._read_block(self._array, self.dims, window)
        block = np.transpose(block, [dims.index(d) for d in ("band", "y", "x")])
        return np.take(block, self._indexes, axis=0)

    def read_sequence(self, window: Window) -> np.ndarray:
        """``(T, B, h, w)`` raw bands of every time step of a cube."""
        if self.timestamps is None:
            raise DataError(f"{self._where}: not a time cube read whole (no time axis, or time_index is set)")
        block, dims = self._read_block(self._array, self.dims, window)
        block = np.transpose(block, [dims.index(d) for d in ("time", "band", "y", "x")])
        return np.take(block, self._indexes, axis=1)

    def invalid(self, window: Window) -> Optional[np.ndarray]:
        """``(h, w)`` (``(T, h, w)`` for a cube read whole) bool, True where the mask array is nonzero."""
        if self._mask is None:
            return None
        block, dims = self._read_block(self._mask, tuple(d for d in self.dims if d != "band"), window)
        return np.transpose(block != 0, [dims.index(d) for d in ("time", "y", "x") if d in dims])

    def _get(self, array, slices: tuple) -> np.ndarray:
        try:
            return np.asarray(array[slices])
        except Exception as exc:  # zarr raises many types for damaged chunks; name the store either way
            raise DataError(f"{self._where}: read failed ({type(exc).__name__}: {exc})") from None

    def close(self) -> None:
        self._array = self._mask = None

    def __enter__(self) -> "ZarrSceneReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: Path, where: str):
    if not path.exists():
        raise DataError(f"{where}: zarr store not found")
    try:
        return zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr's errors differ between v2 and v3 stores
        raise DataError(f"{where}: cannot open zarr store ({type(exc).__name__}: {exc})") from None


def _pick_array(root, name: str, where: str):
    if isinstance(root, zarr.Array):
        if name:
            raise DataError(f"{where}: the store is a single array; it has no array {name!r}")
        return root
    if not name:
        raise DataError(f"{where}: the store is a group; set `array` to one of {sorted(root.array_keys())}")
    try:
        node = root[name]
    except KeyError:
        raise DataError(f"{where}: no array {name!r} in the store; arrays: {sorted(root.array_keys())}") from None
    if not isinstance(node, zarr.Array):
        raise DataError(f"{where}: {name!r} is a group, not an array")
    return node

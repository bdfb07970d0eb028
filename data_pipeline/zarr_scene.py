"""Read scenes stored as zarr arrays (datacubes, time series) with the same interface as the GeoTIFF reader.

The array's axes are named by the input's ``dims`` (``band``, ``y``, ``x`` and optionally ``time``, any
order). Georeferencing and band names come from attributes of the array (or, failing that, its group):

- ``crs`` (e.g. ``"EPSG:32633"``) and ``transform`` (6 affine terms ``a, b, c, d, e, f``, rasterio order);
- ``band_names``: the band of each position on the ``band`` axis; modality bands are picked by name (or by
  the input's ``band_indexes``, 1-based), so a cube may hold more bands than a modality uses;
- ``timestamps`` (ISO 8601, one per ``time`` step) for time cubes; ``nodata`` optionally.

An invalid mask is another array of the store (``invalid_mask``) with the same axes minus ``band``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import zarr
from rasterio.transform import Affine
from rasterio.windows import Window

from data_pipeline.read import Scene
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
        self._crs = str(self._attr("crs"))
        terms = self._attr("transform")
        if not isinstance(terms, (list, tuple)) or len(terms) < 6:
            raise DataError(f"{where}: attribute 'transform' must list 6 affine terms, got {terms!r}")
        self._transform = Affine(*[float(v) for v in terms[:6]])
        self._indexes = self._band_positions()
        self._check_dtype()
        self.timestamps: Optional[list[str]] = None
        if "time" in self.dims:
            steps = self._array.shape[self.dims.index("time")]
            stamps = self._attrs.get("timestamps")
            if not isinstance(stamps, list) or len(stamps) != steps:
                raise DataError(f"{where}: a time cube needs attribute 'timestamps' with {steps} entries")
            self.timestamps = [str(s) for s in stamps]
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

    def _slices(self, window: Window, time: Optional[int] = None) -> tuple:
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        by_dim = {"y": rows, "x": cols, "band": slice(None), "time": slice(None) if time is None else time}
        return tuple(by_dim[d] for d in self.dims)

    def _ordered(self, block: np.ndarray, with_time: bool) -> np.ndarray:
        """Axes of a read block reordered to ([time,] band, y, x), modality bands picked."""
        dims = [d for d in self.dims if with_time or d != "time"]
        order = (["time"] if with_time else []) + ["band", "y", "x"]
        block = np.transpose(block, [dims.index(d) for d in order])
        return np.take(block, self._indexes, axis=1 if with_time else 0)

    def read(self, window: Window) -> np.ndarray:
        if self.timestamps is not None:
            raise DataError(f"{self._where}: a time cube has no single image; list it under `sequences`")
        return self._ordered(self._get(self._array, self._slices(window)), with_time=False)

    def read_sequence(self, window: Window) -> np.ndarray:
        """``(T, B, h, w)`` raw bands of every time step."""
        return self._ordered(self._get(self._array, self._slices(window)), with_time=True)

    def invalid(self, window: Window) -> Optional[np.ndarray]:
        """``(h, w)`` (or ``(T, h, w)`` for a time cube) bool, True where the mask array is nonzero."""
        if self._mask is None:
            return None
        mask_dims = [d for d in self.dims if d != "band"]
        by_dim = dict(zip(self.dims, self._slices(window)))
        block = self._get(self._mask, tuple(by_dim[d] for d in mask_dims)) != 0
        order = (["time"] if "time" in mask_dims else []) + ["y", "x"]
        return np.transpose(block, [mask_dims.index(d) for d in order])

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

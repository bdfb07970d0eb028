"""Find the scenes of an input, open their band files with rasterio and read tile windows.

Every band file of a scene must share one pixel grid (shape, CRS, transform); a mismatch, a missing file or a
wrong band count is a ``DataError`` naming the file, raised before any tile is written.
"""

from __future__ import annotations

import functools
import glob
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from data_pipeline.config import InputSpec, ScalingSpec, scene_pattern
from data_pipeline.encoding import apply_scaling, check_encoding, scaled_nodata
from data_pipeline.handles import RasterHandles, gdal_reason, open_dataset
from data_pipeline.safe import is_s2_product, read_s2_product
from data_pipeline.scene import Scene
from data_pipeline.sentinel1 import is_s1_grd, polarisations, read_s1_product
from data_pipeline.stac import expand_collections, is_stac_item, stac_item_bands
from data_pipeline.strips import RowStrips
from data_pipeline.subdatasets import subdataset_uris
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.sensors import SensorSpec


def find_scenes(spec: InputSpec, config_dir: Path) -> list[Path]:
    """Sorted matches of the ``scenes`` glob (the file part of a subdataset URI), relative to the config's
    directory unless absolute, kept to those in ``scene_list`` when one is given."""
    scenes, _ = scene_pattern(spec)
    pattern = scenes if Path(scenes).is_absolute() else str(config_dir / scenes)
    matches = sorted(Path(p) for p in glob.glob(pattern))
    if not matches:
        raise DataError(f"input {spec.source!r}: scenes pattern {spec.scenes!r} matches nothing (looked for {pattern})")
    if spec.scene_list:
        matches = _listed(matches, config_dir / spec.scene_list, spec)
    return [scene for path in matches for scene in expand_collections(path)]


def _listed(matches: list[Path], list_file: Path, spec: InputSpec) -> list[Path]:
    """The matches whose path ends with a line of ``list_file``; every listed scene must be found."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"input {spec.source!r}: cannot read scene_list {list_file}: {exc.strerror}") from None
    wanted = {Path(line.strip()).parts for line in lines if line.strip()}
    depths = {len(parts) for parts in wanted}
    kept = [path for path in matches if any(path.parts[-depth:] in wanted for depth in depths)]
    found = {path.parts[-depth:] for path in kept for depth in depths}
    missing = sorted("/".join(parts) for parts in wanted - found)
    if missing:
        raise DataError(
            f"input {spec.source!r}: {len(missing)} scenes of scene_list {list_file} are not matched by "
            f"{spec.scenes!r}, e.g. {missing[:3]}"
        )
    return kept


def scene_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def is_zarr_store(path: Path) -> bool:
    return path.suffix == ".zarr" or any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup"))


def resolve_scene(path: Path, spec: InputSpec, sensor: SensorSpec) -> Scene:
    """Map the source's modality bands to (file, band index) pairs for one scene."""
    scene = _resolve_bands(path, spec, sensor)
    scene.downsample = spec.downsample
    scene.dims = tuple(spec.dims)
    scene.time_index = spec.time_index
    scene.scaling = spec.scaling
    if spec.scaling is not None and sensor.normalization.kind == "complex":
        raise ConfigError(f"input {spec.source!r}: scaling maps real values; complex SAR is read as stored")
    if spec.downsample > 1 and sensor.normalization.kind == "complex":
        raise ConfigError(f"input {spec.source!r}: downsample averages pixels, which destroys complex SAR phase")
    if spec.downsample > 1 and scene.store == "zarr":
        # Reduced-resolution reads go through GDAL (overviews, nodata-aware averaging); zarr has neither.
        raise ConfigError(f"input {spec.source!r}: downsample needs a GDAL raster; {path} is a zarr store")
    if "time" in spec.dims and scene.store != "zarr":
        raise ConfigError(f"input {spec.source!r}: a time axis needs a zarr store; {path} is not one")
    if spec.invalid_mask is not None:
        if scene.store == "zarr":
            scene.array_mask = spec.invalid_mask
        else:
            mask = (path if path.is_dir() else path.parent) / spec.invalid_mask.format(scene=scene.name)
            if not mask.is_file():
                raise DataError(f"{mask}: invalid mask of scene {scene.name!r} (source {sensor.name!r}) not found")
            scene.invalid_mask = mask
    return scene


def _resolve_bands(path: Path, spec: InputSpec, sensor: SensorSpec) -> Scene:
    name = scene_name(path)
    bands = sensor.modality_bands
    subdataset = scene_pattern(spec)[1]
    if subdataset is not None:
        return _resolve_subdatasets(path, name, subdataset, spec, sensor)
    if is_stac_item(path):
        if spec.band_files is not None or spec.band_indexes is not None:
            raise DataError(f"{path}: a STAC Item's assets are its band files; band_files/band_indexes do not apply")
        unknown = sorted(set(spec.assets) - {b.name for b in sensor.bands})
        if unknown:
            raise ConfigError(f"input {spec.source!r}: assets names unknown bands {unknown}")
        item_id, files, when = stac_item_bands(path, bands, dict(spec.assets))
        return Scene(item_id, path, files, [1] * len(bands), expect_count=1, time=when)
    if spec.assets:
        raise DataError(f"{path}: input {spec.source!r} sets assets, but the scene is not a STAC Item (JSON)")
    if is_s2_product(path) or is_s1_grd(path):
        return _resolve_product(path, name, spec, sensor)
    if is_zarr_store(path):
        if spec.band_files is not None:
            raise DataError(f"{path}: scene of source {sensor.name!r} is a zarr store but the input sets band_files")
        indexes = _band_indexes(spec, sensor) if spec.band_indexes is not None else []  # [] = from band_names
        expect = None if spec.band_indexes is not None else len(bands)
        return Scene(name, path, [path] * len(bands), indexes, expect, store="zarr", array=spec.array)
    if path.is_dir():
        if spec.band_files is None:
            raise DataError(f"{path}: scene of source {sensor.name!r} is a directory but the input sets no band_files")
        files = [path / spec.band_files.format(scene=name, band=b, band_lower=b.lower()) for b in bands]
        for band, file in zip(bands, files):
            if not file.is_file():
                raise DataError(f"{file}: band {band!r} of scene {name!r} (source {sensor.name!r}) not found")
        return Scene(name, path, files, [1] * len(bands), expect_count=1)
    if spec.band_files is not None:
        raise DataError(f"{path}: scene of source {sensor.name!r} is a file but the input sets band_files")
    expect = len(bands) if spec.band_indexes is None else None
    return Scene(name, path, [path] * len(bands), _band_indexes(spec, sensor), expect_count=expect)


def _resolve_product(path: Path, name: str, spec: InputSpec, sensor: SensorSpec) -> Scene:
    """A Sentinel-2 L1C/L2A or Sentinel-1 GRD .SAFE directory: it names its own band files and encoding."""
    if spec.band_files is not None or spec.band_indexes is not None or spec.scaling is not None:
        raise DataError(
            f"{path}: a .SAFE product names its band files and encoding; band_files, band_indexes and scaling "
            "do not apply"
        )
    bands = sensor.modality_bands
    if is_s1_grd(path):
        grd = read_s1_product(path)
        wanted = polarisations(sensor)
        missing = [p for p in wanted if p not in grd.measurements]
        if missing:
            raise DataError(f"{path}: polarisations {missing} of source {sensor.name!r} are not in this GRD product")
        files = [grd.measurements[p] for p in wanted]
        return Scene(name, path, files, [1] * len(bands), 1, time=grd.time, product=grd, crs=spec.crs)
    product = read_s2_product(path)
    missing = [b for b in bands if b not in product.band_files]
    if missing:
        raise DataError(f"{path}: bands {missing} of source {sensor.name!r} are not in this {product.level} product")
    files = [product.band_files[b] for b in bands]
    return Scene(name, path, files, [1] * len(bands), expect_count=1, time=product.time, product=product)


def _resolve_subdatasets(path: Path, name: str, subdataset: str, spec: InputSpec, sensor: SensorSpec) -> Scene:
    """A container file (netCDF, HDF5): one variable per band (``{band}`` in the name) or one for all bands."""
    if path.is_dir():
        raise DataError(
            f"{path}: scene of source {sensor.name!r} is a directory; subdataset {subdataset!r} needs a file"
        )
    bands = sensor.modality_bands
    if "{band" in subdataset:
        uris = subdataset_uris(path, [subdataset.format(band=b, band_lower=b.lower()) for b in bands])
        return Scene(name, path, [path] * len(bands), [1] * len(bands), expect_count=1, subdatasets=uris)
    expect = len(bands) if spec.band_indexes is None else None
    uris = subdataset_uris(path, [subdataset]) * len(bands)
    return Scene(name, path, [path] * len(bands), _band_indexes(spec, sensor), expect, subdatasets=uris)


def _band_indexes(spec: InputSpec, sensor: SensorSpec) -> list[int]:
    if spec.band_indexes is None:
        return list(range(1, len(sensor.modality_bands) + 1))
    known = {b.name for b in sensor.bands}
    unknown = sorted(set(spec.band_indexes) - known)
    if unknown:
        raise ConfigError(f"input {spec.source!r}: band_indexes names unknown bands {unknown}; bands: {sorted(known)}")
    missing = [b for b in sensor.modality_bands if b not in spec.band_indexes]
    if missing:
        raise ConfigError(f"input {spec.source!r}: band_indexes lacks modality bands {missing}")
    indexes = [spec.band_indexes[b] for b in sensor.modality_bands]
    for index, count in Counter(indexes).items():
        if count > 1:
            # Copies of one band pass as distinct measurements (a SAR ratio channel would be constant).
            twins = [b for b in sensor.modality_bands if spec.band_indexes[b] == index]
            raise ConfigError(
                f"input {spec.source!r}: band_indexes map {twins} to the same band {index} of the file; a sensor "
                "with fewer bands is its own source with fill_channels: replicate (docs/data.md, adding a sensor)"
            )
    # Bands the sensor has but the modality does not use are allowed in the map and simply not read.
    return indexes


class SceneReader(RasterHandles):
    """Open datasets of one scene; ``read(window)`` returns the raw modality bands ``(B, h, w)``."""

    def __init__(self, scene: Scene, sensor: SensorSpec) -> None:
        self.scene = scene
        self.sensor = sensor
        self._sources = scene.band_sources()
        self._datasets: dict[str, rasterio.DatasetReader] = {}
        self._mask: Optional[rasterio.DatasetReader] = None
        try:
            for source in dict.fromkeys(self._sources):
                self._datasets[source] = open_dataset(source)
            self._check()
            if scene.invalid_mask is not None:
                self._open_mask(scene.invalid_mask)
        except BaseException:
            self.close()
            raise
        # Downsampled scenes keep reading window by window: GDAL's overview choice depends on the window.
        width = self.shape[1]
        row_bytes = width * sum(np.dtype(self._datasets[f].dtypes[i - 1]).itemsize for f, i in self._bands())
        self._band_strips = RowStrips(self._read_bands, width, row_bytes)
        self._mask_strips = RowStrips(self._read_invalid, width, width)

    def _check(self) -> None:
        scene, sensor = self.scene, self.sensor
        first_name = self._sources[0]
        first = self._datasets[first_name]
        complex_wanted = sensor.normalization.kind == "complex"
        for band, file, index in zip(sensor.modality_bands, self._sources, scene.indexes):
            ds = self._datasets[file]
            if ds.crs is None and ds.gcps[0]:
                raise DataError(
                    f"{file}: georeferenced by {len(ds.gcps[0])} GCPs only, not on a map grid; warp it first "
                    "(gdalwarp -tps -t_srs ...) or, for a Sentinel-1 GRD, give its .SAFE directory as the scene"
                )
            if scene.expect_count == 1 and ds.count != 1:
                raise DataError(f"{file}: expected 1 band (one file per band, band {band!r}), found {ds.count}")
            if scene.expect_count is not None and ds.count != scene.expect_count:
                raise DataError(
                    f"{file}: expected {scene.expect_count} bands {sensor.modality_bands} for source "
                    f"{sensor.name!r}, found {ds.count} (set band_indexes to pick bands from a larger file)"
                )
            if index > ds.count:
                raise DataError(f"{file}: band {band!r} is mapped to band {index}, file has {ds.count} bands")
            is_complex = np.dtype(ds.dtypes[index - 1]).kind == "c"
            if is_complex != complex_wanted:
                want = "complex" if complex_wanted else "real"
                dtype = ds.dtypes[index - 1]
                raise DataError(f"{file}: band {index} is {dtype}, source {sensor.name!r} needs {want} data")
            check_encoding(
                file, index, ds.dtypes[index - 1], ds.scales[index - 1], ds.offsets[index - 1], sensor, scene.scaling
            )
            if ds.shape != first.shape:
                raise DataError(f"{file}: shape {ds.shape} differs from {first_name} {first.shape}")
            if ds.crs != first.crs:
                raise DataError(f"{file}: CRS {ds.crs} differs from {first_name} ({first.crs})")
            if not ds.transform.almost_equals(first.transform):
                raise DataError(f"{file}: transform differs from {first_name}; bands must share one grid")
            if scene.subdatasets and ds.crs is None:
                # A variable without a grid mapping has only array indexes: tiles would have no place on Earth.
                raise DataError(
                    f"{file}: no georeferencing (no CF grid_mapping variable or CRS that GDAL recognises); "
                    "the variable cannot be placed on a map grid"
                )

    @property
    def _first(self) -> rasterio.DatasetReader:
        return self._datasets[self._sources[0]]

    @property
    def shape(self) -> tuple[int, int]:
        height, width = self._first.shape
        return height // self.scene.downsample, width // self.scene.downsample

    @functools.cached_property
    def crs(self) -> str:  # cached: to_string() costs 0.1 ms and is asked once per tile
        crs = self._first.crs
        return crs.to_string() if crs else ""

    @property
    def transform(self):  # rasterio Affine, of the (possibly downsampled) pixel grid
        return self._first.transform @ Affine.scale(self.scene.downsample)

    def file_nodata(self) -> list[Optional[float]]:
        """The nodata value each band's file declares (may differ from the source registry's)."""
        return [self._datasets[f].nodatavals[i - 1] for f, i in zip(self._sources, self.scene.indexes)]

    def read(self, window: Window) -> np.ndarray:
        """Raw modality bands ``(B, h, w)`` of ``window`` (in this reader's, possibly downsampled, pixels); a
        read-only view that the next ``read`` may replace."""
        return self._band_strips.window(window) if self.scene.downsample == 1 else self._read_bands(window)

    def invalid(self, window: Window) -> Optional[np.ndarray]:
        """``(h, w)`` bool, True where the scene's invalid mask (clouds, ...) is set; None without a mask."""
        if self._mask is None:
            return None
        return self._mask_strips.window(window) if self.scene.downsample == 1 else self._read_invalid(window)

    def _bands(self) -> list[tuple[str, int]]:
        return list(zip(self._sources, self.scene.indexes))

    def _read_bands(self, window: Window) -> np.ndarray:
        try:
            planes = [self._read(self._datasets[f], i, window) for f, i in self._bands()]
        except RasterioError as exc:
            raise DataError(f"{self.scene.path}: read of window {window} failed ({gdal_reason(exc)})") from None
        stack = np.stack(planes)
        stack.flags.writeable = False  # shared by every tile of a strip
        return stack

    def _read_invalid(self, window: Window) -> np.ndarray:
        assert self._mask is not None
        try:
            factor = self.scene.downsample
            if factor == 1:
                return self._mask.read(1, window=window) != 0
            # A coarse pixel is invalid when any pixel under it is: resampling could drop a small cloud.
            full = self._mask.read(1, window=_full_res(window, factor)) != 0
            return full.reshape(int(window.height), factor, int(window.width), factor).any(axis=(1, 3))
        except RasterioError as exc:
            raise DataError(f"{self.scene.invalid_mask}: read of window {window} failed ({gdal_reason(exc)})") from None

    def _read(self, ds, index: int, window: Window) -> np.ndarray:
        factor = self.scene.downsample
        if factor == 1:
            return ds.read(index, window=window)
        # Reading a large window into a small out_shape lets GDAL pick the closest overview level; average
        # resampling skips pixels equal to the file's nodata.
        shape = (int(window.height), int(window.width))
        return ds.read(index, window=_full_res(window, factor), out_shape=shape, resampling=Resampling.average)

    def _open_mask(self, path: Path) -> None:
        try:
            self._mask = rasterio.open(path)
        except RasterioError as exc:
            raise DataError(f"{path}: cannot open invalid mask ({gdal_reason(exc)})") from None
        first = self._first
        if self._mask.count != 1:
            raise DataError(f"{path}: invalid mask must have 1 band, found {self._mask.count}")
        if self._mask.shape != first.shape or self._mask.crs != first.crs:
            raise DataError(f"{path}: invalid mask grid {self._mask.shape} {self._mask.crs} differs from the scene's")
        if not self._mask.transform.almost_equals(first.transform):
            raise DataError(f"{path}: invalid mask transform differs from the scene's")


def _full_res(window: Window, factor: int) -> Window:
    """The full-resolution window under ``window`` of a grid downsampled by ``factor``."""
    return Window(window.col_off * factor, window.row_off * factor, window.width * factor, window.height * factor)


def band_offsets(reader) -> Optional[list[float]]:
    """What a reader's products add to each band before the scale (Sentinel-2 baseline >= 04.00), or None."""
    offsets = getattr(reader, "band_offsets", None)
    return None if offsets is None else offsets()


def open_scene(scene: Scene, sensor: SensorSpec):
    """The reader for ``scene``; every reader has ``shape``, ``crs``, ``transform``, ``file_nodata()``,
    ``read(window)`` and ``invalid(window)``; zarr time cubes also ``timestamps`` and ``read_sequence(window)``."""
    if scene.store == "zarr":
        from data_pipeline.zarr_scene import ZarrSceneReader  # zarr is only imported when a store is read

        reader = ZarrSceneReader(scene, sensor)
    elif scene.product is not None:
        return scene.product.open(sensor, scene.crs)
    else:
        reader = SceneReader(scene, sensor)
    return reader if scene.scaling is None else ScaledReader(reader, scene.scaling)


class ScaledReader:
    """A reader whose pixels (and nodata markers) are mapped from the file's encoding to the source's units."""

    def __init__(self, reader, scaling: ScalingSpec) -> None:
        self._reader = reader
        self._scaling = scaling

    def __getattr__(self, name: str):
        return getattr(self._reader, name)

    def read(self, window: Window) -> np.ndarray:
        return apply_scaling(self._reader.read(window), self._scaling)

    def read_sequence(self, window: Window) -> np.ndarray:
        return apply_scaling(self._reader.read_sequence(window), self._scaling)

    def file_nodata(self) -> list[Optional[float]]:
        return scaled_nodata(self._reader.file_nodata(), self._scaling)

    def __enter__(self) -> "ScaledReader":
        return self

    def __exit__(self, *exc) -> None:
        self._reader.close()

"""Find the scenes of an input, open their band files with rasterio and read tile windows.

Every band file of a scene must share one pixel grid (shape, CRS, transform); a mismatch, a missing file or a
wrong band count is a ``DataError`` naming the file, raised before any tile is written.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from data_pipeline.config import InputSpec
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.sensors import SensorSpec


@dataclass
class Scene:
    """Where each modality band of one scene lives: ``files[i]`` band ``indexes[i]`` (1-based).

    ``expect_count``: the band count every file must have (1 per band file; N for a multi-band file read with
    the default 1..N indexes); ``None`` when explicit ``band_indexes`` may pick from a larger file.
    """

    name: str
    path: Path
    files: list[Path]
    indexes: list[int]
    expect_count: Optional[int]


def find_scenes(spec: InputSpec, config_dir: Path) -> list[Path]:
    """Sorted matches of the ``scenes`` glob, relative to the config's directory unless absolute."""
    pattern = spec.scenes if Path(spec.scenes).is_absolute() else str(config_dir / spec.scenes)
    matches = sorted(Path(p) for p in glob.glob(pattern))
    if not matches:
        raise DataError(f"input {spec.source!r}: scenes pattern {spec.scenes!r} matches nothing (looked for {pattern})")
    return matches


def scene_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def resolve_scene(path: Path, spec: InputSpec, sensor: SensorSpec) -> Scene:
    """Map the source's modality bands to (file, band index) pairs for one scene."""
    name = scene_name(path)
    bands = sensor.modality_bands
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
    # Bands the sensor has but the modality does not use are allowed in the map and simply not read.
    return [spec.band_indexes[b] for b in sensor.modality_bands]


class SceneReader:
    """Open datasets of one scene; ``read(window)`` returns the raw modality bands ``(B, h, w)``."""

    def __init__(self, scene: Scene, sensor: SensorSpec) -> None:
        self.scene = scene
        self.sensor = sensor
        self._datasets: dict[Path, rasterio.DatasetReader] = {}
        try:
            for file in dict.fromkeys(scene.files):
                try:
                    self._datasets[file] = rasterio.open(file)
                except RasterioError as exc:
                    raise DataError(f"{file}: cannot open raster ({exc})") from None
            self._check()
        except BaseException:
            self.close()
            raise

    def _check(self) -> None:
        scene, sensor = self.scene, self.sensor
        first = self._datasets[scene.files[0]]
        complex_wanted = sensor.normalization.kind == "complex"
        for band, file, index in zip(sensor.modality_bands, scene.files, scene.indexes):
            ds = self._datasets[file]
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
            if ds.shape != first.shape:
                raise DataError(f"{file}: shape {ds.shape} differs from {scene.files[0].name} {first.shape}")
            if ds.crs != first.crs:
                raise DataError(f"{file}: CRS {ds.crs} differs from {scene.files[0].name} ({first.crs})")
            if not ds.transform.almost_equals(first.transform):
                raise DataError(f"{file}: transform differs from {scene.files[0].name}; bands must share one grid")

    @property
    def _first(self) -> rasterio.DatasetReader:
        return self._datasets[self.scene.files[0]]

    @property
    def shape(self) -> tuple[int, int]:
        return self._first.shape

    @property
    def crs(self) -> str:
        crs = self._first.crs
        return crs.to_string() if crs else ""

    @property
    def transform(self):  # rasterio Affine
        return self._first.transform

    def file_nodata(self) -> list[Optional[float]]:
        """The nodata value each band's file declares (may differ from the source registry's)."""
        return [self._datasets[f].nodatavals[i - 1] for f, i in zip(self.scene.files, self.scene.indexes)]

    def read(self, window: Window) -> np.ndarray:
        try:
            planes = [self._datasets[f].read(i, window=window) for f, i in zip(self.scene.files, self.scene.indexes)]
        except RasterioError as exc:
            raise DataError(f"{self.scene.path}: read of window {window} failed ({exc})") from None
        return np.stack(planes)

    def close(self) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_scene(scene: Scene, sensor: SensorSpec) -> SceneReader:
    """The reader for ``scene``; every reader has ``shape``, ``crs``, ``transform``, ``file_nodata()`` and
    ``read(window)``."""
    return SceneReader(scene, sensor)

"""Sentinel-1 GRD ``.SAFE`` products as scenes: sigma0 calibration from the annotation LUTs, GCP georeferencing.

A GRD product holds, per polarisation, a ``measurement/*.tiff`` of uint16 amplitude digital numbers in radar
geometry (lines x pixels, georeferenced only by a grid of GCPs in EPSG:4326) and an
``annotation/calibration/calibration-*.xml`` whose ``calibrationVector``s give ``sigmaNought`` on a sparse
(line, pixel) grid. The reader puts the scene on a map grid (the input's ``crs``, else the UTM zone of the
scene's centre, at the source's ground sampling distance, pixel edges on multiples of it) and reads a tile by:
finding the radar window under it (through the GCPs), calibrating sigma0 = DN^2 / A^2 there with A
interpolated bilinearly from the LUT (ESA's definition, Sentinel-1 Level-1 product specification), warping the
linear sigma0 onto the tile (thin-plate spline through the GCPs, bilinear: power, not dB, is averaged), and
converting to dB. DN = 0 (the products' fill) and pixels outside the swath are NaN: invalid, and counted.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine, GCPTransformer, from_origin
from rasterio.warp import reproject
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from data_pipeline.handles import RasterHandles, open_dataset
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.sensors import SensorSpec

MARGIN_PX = 3  # radar pixels read around a tile's footprint, for the resampling kernel
_MEASUREMENT = re.compile(r"s1[abcd]-\w+-grd[hmf]?-(hh|hv|vh|vv)-.*\.tiff?$", re.I)


def is_s1_grd(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.safe").is_file() and any((path / "measurement").glob("*.tif*"))


@dataclass
class CalibrationLUT:
    """``sigmaNought`` (``values``, lines x pixels) on the sparse grid of ``lines`` x ``pixels``."""

    lines: np.ndarray
    pixels: np.ndarray
    values: np.ndarray

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Bilinear interpolation at the grid ``rows`` x ``cols`` (1-D arrays of radar lines and pixels)."""
        along_pixels = np.stack([np.interp(cols, self.pixels, vector) for vector in self.values])
        return np.stack([np.interp(rows, self.lines, along_pixels[:, j]) for j in range(len(cols))], axis=1)


def read_calibration(path: Path) -> CalibrationLUT:
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise DataError(f"{path}: calibration annotation is not readable XML ({exc})") from None
    lines, pixels, values = [], None, []
    for vector in root.iter("calibrationVector"):
        try:
            line = int(vector.findtext("line"))
            vector_pixels = np.array(vector.findtext("pixel").split(), dtype=np.float64)
            sigma = np.array(vector.findtext("sigmaNought").split(), dtype=np.float64)
        except (TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: calibrationVector {len(lines)} lacks line/pixel/sigmaNought ({exc})") from None
        if pixels is None:
            pixels = vector_pixels
        if sigma.shape != pixels.shape or not np.array_equal(vector_pixels, pixels):
            raise DataError(f"{path}: calibrationVector at line {line} has another pixel grid than the first")
        lines.append(line)
        values.append(sigma)
    if len(lines) < 2 or np.any(np.diff(lines) <= 0) or np.any(np.array(values) <= 0):
        raise DataError(f"{path}: needs >= 2 calibration vectors at increasing lines with sigmaNought > 0")
    return CalibrationLUT(np.array(lines, dtype=np.float64), pixels, np.array(values))


@dataclass
class S1Product:
    path: Path
    measurements: dict[str, Path]  # polarisation (upper case) -> measurement GeoTIFF
    calibrations: dict[str, Path]  # polarisation -> calibration annotation
    time: Optional[str] = None  # acquisition start (manifest.safe safe:startTime), ISO 8601 UTC

    def metadata_files(self) -> list[Path]:
        return [self.path / "manifest.safe", *self.calibrations.values()]

    def open(self, sensor: SensorSpec, crs: str = "") -> "S1GrdReader":
        return S1GrdReader(self, sensor, crs)


def read_s1_product(path: Path) -> S1Product:
    measurements, calibrations = {}, {}
    for file in sorted((path / "measurement").glob("*.tif*")):
        match = _MEASUREMENT.search(file.name)
        if not match:
            continue
        polarisation = match.group(1).upper()
        calibration = path / "annotation" / "calibration" / f"calibration-{file.stem}.xml"
        if not calibration.is_file():
            raise DataError(f"{calibration}: calibration annotation of {file.name} not found")
        measurements[polarisation], calibrations[polarisation] = file, calibration
    if not measurements:
        raise DataError(f"{path}: no GRD measurement files (measurement/s1?-*-grd?-<pol>-*.tiff)")
    product = S1Product(path, measurements, calibrations)
    try:
        manifest = ElementTree.parse(path / "manifest.safe").getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise DataError(f"{path / 'manifest.safe'}: not readable XML ({exc})") from None
    start = next((e.text for e in manifest.iter() if e.tag.rsplit("}", 1)[-1] == "startTime" and e.text), None)
    if start:
        product.time = start.strip().rstrip("Z")
    return product


def polarisations(sensor: SensorSpec) -> list[str]:
    """The polarisation of each modality band (its ``polarization``, else its name), upper case."""
    return [(sensor.band(b).polarization or b).upper() for b in sensor.modality_bands]


def utm_crs(lon: float, lat: float) -> CRS:
    zone = min(60, int((lon + 180) // 6) + 1)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


class S1GrdReader(RasterHandles):
    """sigma0 in dB, ``(B, h, w)`` float32, of a GRD product's polarisations on a map grid."""

    def __init__(self, product: S1Product, sensor: SensorSpec, crs: str = "") -> None:
        norm = sensor.normalization
        if norm.kind != "db" or not norm.input_is_db:
            raise DataError(f"{product.path}: a GRD product gives sigma0 in dB; source {sensor.name!r} expects other")
        self.product = product
        self.polarisations = polarisations(sensor)  # every one in the product: resolve_scene checked
        self._datasets: dict[str, rasterio.DatasetReader] = {}
        try:
            for polarisation in dict.fromkeys(self.polarisations):
                self._datasets[polarisation] = _open_measurement(product.measurements[polarisation])
            self._luts = {p: read_calibration(product.calibrations[p]) for p in self._datasets}
            first = self._datasets[self.polarisations[0]]
            gcps, gcp_crs = first.gcps
            if len(gcps) < 3 or gcp_crs is None:
                raise DataError(f"{product.measurements[self.polarisations[0]]}: no GCPs to georeference it")
            for polarisation, ds in self._datasets.items():
                if ds.shape != first.shape or _points(ds.gcps[0]) != _points(gcps):
                    raise DataError(f"{product.measurements[polarisation]}: grid or GCPs differ from the other band")
            self._gcps, self._gcp_crs, self._radar_shape = gcps, gcp_crs, first.shape
            self._to_radar = GCPTransformer(gcps, tps=True)  # solved once, not per tile
            self._grid(crs, float(sensor.gsd_m))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        if getattr(self, "_to_radar", None) is not None:
            self._to_radar.close()
            self._to_radar = None

    def _grid(self, crs: str, pixel: float) -> None:
        lons = [g.x for g in self._gcps]
        lats = [g.y for g in self._gcps]
        try:
            self._crs = CRS.from_user_input(crs) if crs else utm_crs(float(np.mean(lons)), float(np.mean(lats)))
        except CRSError as exc:
            raise ConfigError(f"input crs {crs!r} is not a CRS ({exc})") from None
        xs, ys = transform_points(self._gcp_crs, self._crs, lons, lats)
        # Pixel edges on multiples of the pixel size; 1e-6 px of slack so round trips do not add a column.
        left, right = math.floor(min(xs) / pixel + 1e-6) * pixel, math.ceil(max(xs) / pixel - 1e-6) * pixel
        bottom, top = math.floor(min(ys) / pixel + 1e-6) * pixel, math.ceil(max(ys) / pixel - 1e-6) * pixel
        self._transform = from_origin(left, top, pixel, pixel)
        self._shape = (round((top - bottom) / pixel), round((right - left) / pixel))

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def crs(self) -> str:
        return self._crs.to_string()

    @property
    def transform(self) -> Affine:
        return self._transform

    def file_nodata(self) -> list[Optional[float]]:
        return [None] * len(self.polarisations)

    def invalid(self, window: Window) -> None:
        return None

    def read(self, window: Window) -> np.ndarray:
        height, width = int(window.height), int(window.width)
        tile = self._transform @ Affine.translation(window.col_off, window.row_off)
        radar = self._radar_window(tile, height, width)
        out = np.full((len(self.polarisations), height, width), np.nan, dtype=np.float64)
        if radar is None:
            return out.astype(np.float32)
        shifted = [GroundControlPoint(g.row - radar.row_off, g.col - radar.col_off, g.x, g.y, g.z) for g in self._gcps]
        rows = np.arange(radar.row_off, radar.row_off + radar.height, dtype=np.float64)  # the LUT's line numbers
        cols = np.arange(radar.col_off, radar.col_off + radar.width, dtype=np.float64)
        for band, polarisation in enumerate(self.polarisations):
            try:
                dn = self._datasets[polarisation].read(1, window=radar).astype(np.float64)
            except RasterioError as exc:
                where = self.product.measurements[polarisation]
                raise DataError(f"{where}: read of radar window {radar} failed ({exc})") from None
            amplitude = self._luts[polarisation].at(rows, cols)
            sigma0 = np.where(dn > 0, dn * dn / (amplitude * amplitude), np.nan)
            reproject(
                sigma0,
                out[band],
                gcps=shifted,
                src_crs=self._gcp_crs,
                src_nodata=np.nan,
                dst_transform=tile,
                dst_crs=self._crs,
                dst_nodata=np.nan,
                resampling=Resampling.bilinear,
                SRC_METHOD="GCP_TPS",
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            return (10.0 * np.log10(out)).astype(np.float32)

    def _radar_window(self, tile: Affine, height: int, width: int) -> Optional[Window]:
        """The radar pixels under a map tile (its edge points through the GCPs), with a margin; None if none."""
        steps = np.linspace(0, 1, 9)
        edge = [(u, v) for u in steps for v in (0.0, 1.0)] + [(v, u) for u in steps for v in (0.0, 1.0)]
        xs, ys = zip(*[tile * (u * width, v * height) for u, v in edge])
        lons, lats = transform_points(self._crs, self._gcp_crs, list(xs), list(ys))
        rows, cols = self._to_radar.rowcol(lons, lats, op=float)
        lines, pixels = self._radar_shape
        row0, row1 = max(0, math.floor(min(rows)) - MARGIN_PX), min(lines, math.ceil(max(rows)) + MARGIN_PX)
        col0, col1 = max(0, math.floor(min(cols)) - MARGIN_PX), min(pixels, math.ceil(max(cols)) + MARGIN_PX)
        if row1 <= row0 or col1 <= col0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)


def _open_measurement(path: Path) -> rasterio.DatasetReader:
    ds = open_dataset(path)
    if ds.count != 1 or ds.dtypes[0] != "uint16":
        ds.close()
        raise DataError(f"{path}: a GRD measurement is one uint16 band of amplitude DN, found {ds.count} x {ds.dtypes}")
    return ds


def _points(gcps: list[GroundControlPoint]) -> list[tuple[float, float, float, float]]:
    return [(g.row, g.col, g.x, g.y) for g in gcps]

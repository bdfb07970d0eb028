"""Sentinel-2 L1C / L2A ``.SAFE`` products as scenes.

A product directory holds its metadata (``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``) and, under
``GRANULE/<granule>/IMG_DATA``, one JPEG 2000 file per band (L2A: in ``R10m``, ``R20m``, ``R60m``). A scene of a
Sentinel-2 source may be such a directory: each modality band is read from its finest file, bands coarser than
the finest band are repeated onto its grid (nearest: 20 m and 60 m pixels are whole multiples of 10 m); the
tiles keep the files' uint16 digital numbers, and the product's radiometric offsets (processing baseline
>= 04.00: ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET``, -1000) are recorded per tile and added before the scale,
so reflectance = (DN + offset) / QUANTIFICATION_VALUE. A product whose quantification value differs from the
source's scale is an error. Pixels are invalid where the product's own mask says so: the L2A scene
classification (``SCL``: no data, saturated, cloud shadow, cloud medium and high probability, thin cirrus) or
the L1C baseline >= 04.00 raster cloud mask (``QI_DATA/MSK_CLASSI_B00.jp2``: opaque clouds, cirrus). Older L1C
products keep their cloud mask as GML vectors, which are not read (the scene is taken unmasked and says so).
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from data_pipeline.encoding import check_encoding
from data_pipeline.handles import RasterHandles, open_dataset
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import SensorSpec

log = logging.getLogger(__name__)

METADATA_NAMES = {"MTD_MSIL1C.xml": "L1C", "MTD_MSIL2A.xml": "L2A"}
# The band order of band_id in the product metadata (0..12).
BAND_IDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
SCL_INVALID = (0, 1, 3, 8, 9, 10)  # no data, saturated/defective, cloud shadow, cloud medium/high, thin cirrus
CLASSI_INVALID_BANDS = (1, 2)  # MSK_CLASSI_B00: 1 opaque clouds, 2 cirrus (3: snow and ice, kept)
_BAND_FILE = re.compile(r"_(B\d\d|B8A|SCL)(?:_(\d+)m)?\.jp2$")


@dataclass
class S2Product:
    path: Path
    level: str  # L1C or L2A
    baseline: str
    quantification: float
    offsets: dict[str, float]  # band -> radiometric add offset (0 before baseline 04.00)
    band_files: dict[str, Path]  # band -> its finest-resolution file
    mask: Optional[Path] = None  # SCL (L2A) or MSK_CLASSI_B00 (L1C, baseline >= 04.00)
    time: Optional[str] = None  # PRODUCT_START_TIME, ISO 8601 UTC
    notes: list[str] = field(default_factory=list)

    def metadata_files(self) -> list[Path]:
        """Files beside the band files that change the tiles: the metadata (offsets) and the mask."""
        return sorted(self.path.glob("MTD_MSIL*.xml")) + ([self.mask] if self.mask else [])

    def open(self, sensor: SensorSpec, crs: str = "") -> "S2ProductReader":
        return S2ProductReader(self, sensor)

    @property
    def mask_kind(self) -> str:
        return "" if self.mask is None else ("scl" if self.level == "L2A" else "classi")


def is_s2_product(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in METADATA_NAMES)


def read_s2_product(path: Path) -> S2Product:
    """The product's metadata and files; an unreadable or incomplete product is a ``DataError`` naming it."""
    name = next(n for n in METADATA_NAMES if (path / n).is_file())
    level = METADATA_NAMES[name]
    try:
        root = ElementTree.parse(path / name).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise DataError(f"{path / name}: product metadata is not readable XML ({exc})") from None
    fields = {_local(element.tag): element for element in root.iter()}
    baseline = _text(fields, "PROCESSING_BASELINE", path / name)
    quantity = "QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"
    quantification = float(_text(fields, quantity, path / name))
    offset_tag = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
    offsets = {band: 0.0 for band in BAND_IDS}
    for element in root.iter():
        if _local(element.tag) == offset_tag:
            band_id = int(element.get("band_id", "-1"))
            if not 0 <= band_id < len(BAND_IDS):
                raise DataError(f"{path / name}: {offset_tag} has band_id {band_id}, expected 0..12")
            offsets[BAND_IDS[band_id]] = float((element.text or "").strip())
    if _baseline_number(baseline) >= 4.0 and not any(offsets.values()):
        raise DataError(f"{path / name}: processing baseline {baseline} but no {offset_tag} values")
    product = S2Product(path, level, baseline, quantification, offsets, _band_files(path, level))
    start = fields.get("PRODUCT_START_TIME")
    if start is not None and start.text:
        product.time = (
            datetime.fromisoformat(start.text.strip().replace("Z", "+00:00")).replace(tzinfo=None).isoformat()
        )
    product.mask = _mask_file(path, level, baseline, product.notes)
    return product


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(fields: dict, tag: str, where: Path) -> str:
    element = fields.get(tag)
    if element is None or not (element.text or "").strip():
        raise DataError(f"{where}: product metadata has no {tag}")
    return element.text.strip()


def _baseline_number(baseline: str) -> float:
    try:
        return float(baseline)
    except ValueError:
        return 0.0


def _band_files(path: Path, level: str) -> dict[str, Path]:
    """Per band the file of the finest resolution under GRANULE/*/IMG_DATA."""
    found: dict[str, tuple[int, Path]] = {}
    for file in sorted(path.glob("GRANULE/*/IMG_DATA/**/*.jp2")):
        match = _BAND_FILE.search(file.name)
        if not match or match.group(1) == "SCL":
            continue
        band, metres = match.group(1), int(match.group(2) or 0)
        if band not in found or metres < found[band][0]:
            found[band] = (metres, file)
    if not found:
        raise DataError(f"{path}: no band files (GRANULE/*/IMG_DATA/**/*_Bxx[_NNm].jp2) in this {level} product")
    return {band: file for band, (_, file) in found.items()}


def _mask_file(path: Path, level: str, baseline: str, notes: list[str]) -> Optional[Path]:
    if level == "L2A":
        files = sorted(path.glob("GRANULE/*/IMG_DATA/R20m/*_SCL_20m.jp2")) or sorted(
            path.glob("GRANULE/*/IMG_DATA/**/*_SCL_*.jp2")
        )
        if not files:
            raise DataError(f"{path}: L2A product without its scene classification (IMG_DATA/R20m/*_SCL_20m.jp2)")
        return files[0]
    files = sorted(path.glob("GRANULE/*/QI_DATA/MSK_CLASSI_B00.jp2"))
    if files:
        return files[0]
    if _baseline_number(baseline) >= 4.0:
        raise DataError(f"{path}: L1C baseline {baseline} product without QI_DATA/MSK_CLASSI_B00.jp2")
    notes.append(f"{path.name}: baseline {baseline} keeps clouds as GML vectors, which are not read: no cloud mask")
    return None


class S2ProductReader(RasterHandles):
    """Reads a product's modality bands on the grid of its finest one: ``read(window)`` gives uint16 DN
    ``(B, h, w)``, ``band_offsets()`` what to add before the scale, ``invalid(window)`` the product's mask."""

    def __init__(self, product: S2Product, sensor: SensorSpec) -> None:
        self.product = product
        self.bands = list(sensor.modality_bands)  # every one in the product: resolve_scene checked
        scale = 1.0 / product.quantification
        if sensor.normalization.kind != "reflectance" or not math.isclose(scale, sensor.normalization.scale):
            raise DataError(
                f"{product.path}: reflectance = (DN + offset) / {product.quantification:g}, but source "
                f"{sensor.name!r} normalizes {sensor.normalization.kind} with scale {sensor.normalization.scale}"
            )
        self._datasets: dict[str, rasterio.DatasetReader] = {}
        self._mask: Optional[rasterio.DatasetReader] = None
        try:
            for band in self.bands:
                self._datasets[band] = open_dataset(product.band_files[band])
            if product.mask is not None:
                self._mask = open_dataset(product.mask)
            self._grid = min(self._datasets.values(), key=lambda ds: ds.res[0])
            for band, ds in self._datasets.items():
                _check_grid(ds, self._grid, product.band_files[band])
                file = str(product.band_files[band])
                check_encoding(file, 1, ds.dtypes[0], ds.scales[0], ds.offsets[0], sensor, None)
            if self._mask is not None:
                _check_grid(self._mask, self._grid, product.mask)
        except BaseException:
            self.close()
            raise
        for note in product.notes:
            log.warning(note)

    @property
    def shape(self) -> tuple[int, int]:
        return self._grid.shape

    @property
    def crs(self) -> str:
        return self._grid.crs.to_string() if self._grid.crs else ""

    @property
    def transform(self):
        return self._grid.transform

    def file_nodata(self) -> list[Optional[float]]:
        return [self._datasets[b].nodata for b in self.bands]

    def band_offsets(self) -> Optional[list[float]]:
        """None for a product without offsets (baseline < 04.00): its tiles decode like any uint16 source."""
        offsets = [self.product.offsets.get(b, 0.0) for b in self.bands]
        return offsets if any(offsets) else None

    def read(self, window: Window) -> np.ndarray:
        try:
            return np.stack([_read_on_grid(self._datasets[b], 1, window, self._grid) for b in self.bands])
        except RasterioError as exc:
            raise DataError(f"{self.product.path}: read of window {window} failed ({exc})") from None

    def invalid(self, window: Window) -> Optional[np.ndarray]:
        if self._mask is None:
            return None
        try:
            if self.product.mask_kind == "scl":
                return _read_on_grid(self._mask, 1, window, self._grid, lambda scl: np.isin(scl, SCL_INVALID))
            flags = [_read_on_grid(self._mask, b, window, self._grid, lambda m: m != 0) for b in CLASSI_INVALID_BANDS]
            return np.logical_or.reduce(flags)
        except RasterioError as exc:
            raise DataError(f"{self.product.mask}: read of window {window} failed ({exc})") from None


def _check_grid(ds, grid, path: Path) -> None:
    """``ds`` covers the grid's footprint at a whole multiple (or whole fraction) of its pixel size."""
    factor = ds.res[0] / grid.res[0]
    ratio = factor if factor >= 1 else 1 / factor
    if ds.crs != grid.crs or abs(ratio - round(ratio)) > 1e-9:
        raise DataError(f"{path}: grid {ds.res} m {ds.crs} is not a whole multiple of the product's {grid.res} m grid")
    if not np.allclose(ds.bounds, grid.bounds, atol=grid.res[0] / 2):
        raise DataError(f"{path}: bounds {tuple(ds.bounds)} differ from the product's {tuple(grid.bounds)}")


def _read_on_grid(ds, index: int, window: Window, grid, flag: Optional[Callable] = None) -> np.ndarray:
    """Band ``index`` of ``ds`` under ``window`` of ``grid`` (``flag`` applied at the file's resolution, for
    masks): coarser pixels repeated (nearest); finer ones, only for a flag, any-reduced so a flagged fine pixel
    marks its coarse pixel."""
    factor = ds.res[0] / grid.res[0]
    row, col, height, width = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    if abs(factor - 1) < 1e-9:
        values = ds.read(index, window=window)
        return values if flag is None else flag(values)
    if factor > 1:
        step = round(factor)
        r0, c0 = row // step, col // step
        r1, c1 = math.ceil((row + height) / step), math.ceil((col + width) / step)
        coarse = ds.read(index, window=Window(c0, r0, c1 - c0, r1 - r0))
        coarse = coarse if flag is None else flag(coarse)
        fine = np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)
        return fine[row - r0 * step : row - r0 * step + height, col - c0 * step : col - c0 * step + width]
    if flag is None:
        raise DataError(f"{ds.name}: a band finer than the product's grid")
    step = round(1 / factor)
    fine = flag(ds.read(index, window=Window(col * step, row * step, width * step, height * step)))
    return fine.reshape(height, step, width, step).any(axis=(1, 3))

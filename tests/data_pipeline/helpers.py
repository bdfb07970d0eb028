"""Paths and a GeoTIFF writer shared by the ingest tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine, from_bounds

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo_data"
DEMO_CONFIG = REPO / "configs" / "data" / "demo_build.yaml"
S2_SCENE = DEMO / "sentinel2_l2a_bigearthnet" / "S2A_MSIL2A_20170613T101031_87_48"
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def write_geotiff(
    path: Path, array: np.ndarray, nodata=None, crs: str = "EPSG:32633", origin=(400000.0, 5300000.0)
) -> Path:
    """A real GeoTIFF of ``array`` ``(B, H, W)`` at 10 m, written with rasterio."""
    bands, height, width = array.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=bands,
        dtype=array.dtype,
        crs=crs,
        transform=Affine.translation(*origin) @ Affine.scale(10.0, -10.0),
        nodata=nodata,
    ) as ds:
        ds.write(array)
    return path


def write_eolearn_dates(real_pack: Path, folder: Path, shift_last: bool = False) -> list[str]:
    """The 5 real L1C reference scenes of the eo-learn patch as one GeoTIFF per date (B02, B03, B04, B08 as
    uint16 DN = reflectance * 10000, the product's native encoding). Returns the ISO dates written."""
    base = real_pack / "sentinel2_l1c_timeseries_eolearn"
    scenes = np.load(base / "REFERENCE_SCENES.npy", allow_pickle=False)  # (5, 101, 100, 13)
    stamps = json.loads((base / "TestEOPatch" / "timestamps.json").read_text())
    bbox = json.loads((base / "TestEOPatch" / "bbox.geojson").read_text())
    xs, ys = zip(*bbox["coordinates"][0])
    left, bottom, right, top = min(xs), min(ys), max(xs), max(ys)
    crs = "EPSG:32633"  # bbox.geojson names it as urn:ogc:def:crs:EPSG::32633
    folder.mkdir(parents=True)
    dates = []
    for k, i in enumerate([2, 1, 4, 3, 0]):  # REFERENCE_SCENES[k] is timestamps[i] (pack README)
        dn = np.round(scenes[k][..., [1, 2, 3, 7]] * 10000).astype(np.uint16).transpose(2, 0, 1)
        when = stamps[i].replace("-", "").replace(":", "")[:15]
        offset = 10.0 if shift_last and k == 4 else 0.0  # one date on a grid shifted by one pixel
        transform = from_bounds(left + offset, bottom, right + offset, top, dn.shape[2], dn.shape[1])
        profile = dict(driver="GTiff", height=dn.shape[1], width=dn.shape[2], count=4, dtype="uint16", crs=crs)
        with rasterio.open(folder / f"eopatch_{when}.tif", "w", transform=transform, nodata=0, **profile) as ds:
            ds.write(dn)
        dates.append(stamps[i][:19])
    return sorted(dates)

"""Paths and a GeoTIFF writer shared by the ingest tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

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

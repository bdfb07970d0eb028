"""Sentinel-1 GRD ``.SAFE`` products made from the demo's real BigEarthNet-S1 patches (sigma0 in dB on a UTM
grid): the product layout, a uint16 amplitude measurement per polarisation georeferenced only by a 7 x 7 GCP
grid in EPSG:4326, flipped in azimuth as a descending pass is, and calibration annotations whose sigmaNought
LUT varies linearly in line and pixel (so bilinear interpolation of it is exact). DN = round(sqrt(sigma0) * A).
No GRD product ships with the repository or the shared pack (~1 GB each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.warp import transform as transform_points

LUT_STEP = 20  # lines and pixels between calibration vectors / LUT columns


def lut_value(line: np.ndarray, pixel: np.ndarray) -> np.ndarray:
    return 400.0 + 2.0 * pixel + 0.5 * line


def make_grd(patch: Path, out: Path) -> tuple[Path, np.ndarray, object]:
    """The product, and the patch's dB bands (VV, VH) with its transform and CRS, flipped as the product is."""
    name = patch.name  # S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48
    stamp = name.split("_")[4]
    product = out / f"S1A_IW_GRDH_1SDV_{stamp}_{stamp}_017001_01C5E3_{name.split('_', 5)[-1].replace('_', '')}.SAFE"
    (product / "measurement").mkdir(parents=True)
    (product / "annotation" / "calibration").mkdir(parents=True)
    start = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}.000000"
    (product / "manifest.safe").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" '
        'xmlns:safe="http://www.esa.int/safe/sentinel-1.0"><metadataSection><metadataObject ID="acquisitionPeriod">'
        f"<metadataWrap><xmlData><safe:acquisitionPeriod><safe:startTime>{start}</safe:startTime>"
        "</safe:acquisitionPeriod></xmlData></metadataWrap></metadataObject></metadataSection></xfdu:XFDU>\n"
    )
    bands = {}
    for polarisation in ("VV", "VH"):
        with rasterio.open(patch / f"{name}_{polarisation}.tif") as ds:
            bands[polarisation], transform, crs = ds.read(1).astype(np.float64), ds.transform, ds.crs
    height, width = bands["VV"].shape
    # Radar geometry: azimuth lines run south to north (a descending pass), range pixels west to east.
    radar = {p: band[::-1] for p, band in bands.items()}
    rows, cols = np.meshgrid(np.linspace(0, height, 7), np.linspace(0, width, 7), indexing="ij")
    map_rows = height - rows  # line 0 is the southern edge
    xs, ys = rasterio.transform.xy(transform, map_rows.ravel(), cols.ravel(), offset="ul")
    lons, lats = transform_points(crs, "EPSG:4326", xs, ys)
    gcps = [GroundControlPoint(r, c, x, y, 0.0) for r, c, x, y in zip(rows.ravel(), cols.ravel(), lons, lats)]
    lines = np.arange(0, height + LUT_STEP, LUT_STEP)
    pixels = np.arange(0, width + LUT_STEP, LUT_STEP)
    amplitude = lut_value(*np.meshgrid(np.arange(height), np.arange(width), indexing="ij"))
    for number, (polarisation, db) in enumerate(radar.items(), start=1):
        dn = np.where(np.isfinite(db), np.round(np.sqrt(10 ** (db / 10)) * amplitude), 0).clip(0, 65535)
        stem = f"s1a-iw-grd-{polarisation.lower()}-{stamp.lower()}-{stamp.lower()}-017001-01c5e3-00{number}"
        profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint16")
        profile.update(gcps=gcps, crs=rasterio.crs.CRS.from_epsg(4326))  # GCPs are its only georeference
        with rasterio.open(product / "measurement" / f"{stem}.tiff", "w", **profile) as ds:
            ds.write(dn.astype(np.uint16), 1)
        vectors = "".join(
            f"<calibrationVector><azimuthTime>{start}</azimuthTime><line>{line}</line>"
            f'<pixel count="{len(pixels)}">{" ".join(str(p) for p in pixels)}</pixel>'
            f'<sigmaNought count="{len(pixels)}">{" ".join(f"{v:.6e}" for v in lut_value(line, pixels))}</sigmaNought>'
            f'<betaNought count="{len(pixels)}">{" ".join("2.370000e+02" for _ in pixels)}</betaNought>'
            "</calibrationVector>"
            for line in lines
        )
        (product / "annotation" / "calibration" / f"calibration-{stem}.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<calibration><calibrationInformation>'
            "<absoluteCalibrationConstant>1.000000e+00</absoluteCalibrationConstant></calibrationInformation>"
            f'<calibrationVectorList count="{len(lines)}">{vectors}</calibrationVectorList></calibration>\n'
        )
    dn_db = {}
    for polarisation, db in bands.items():  # the dB the product's DNs hold, after rounding to integers
        dn = np.where(np.isfinite(db), np.round(np.sqrt(10 ** (db / 10)) * amplitude[::-1]), 0)
        with np.errstate(divide="ignore"):
            dn_db[polarisation] = np.where(dn > 0, 20 * np.log10(dn / amplitude[::-1]), np.nan)
    return product, np.stack([dn_db["VV"], dn_db["VH"]]), (transform, crs)

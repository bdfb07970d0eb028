"""Paths, writers of real-format inputs (GeoTIFF, the eo-learn series as GeoTIFF dates or a zarr time cube) and a
shard reader shared by the ingest tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import rasterio
import zarr
from rasterio.transform import Affine, from_bounds

from ringmoe.core.tiles import manifest_decoders, normalized_arrays

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo_data"
DEMO_CONFIG = REPO / "configs" / "data" / "demo_build.yaml"
S2_SCENE = DEMO / "sentinel2_l2a_bigearthnet" / "S2A_MSIL2A_20170613T101031_87_48"
SHARED_REAL = REPO.parent / "shared" / "data" / "real"
EOLEARN = "sentinel2_l1c_timeseries_eolearn"
L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
# REFERENCE_SCENES.npy[k] is the date timestamps[REFERENCE_DATES[k]] of the patch (pack README).
REFERENCE_DATES = [2, 1, 4, 3, 0]


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
    for k, i in enumerate(REFERENCE_DATES):
        dn = np.round(scenes[k][..., [1, 2, 3, 7]] * 10000).astype(np.uint16).transpose(2, 0, 1)
        when = stamps[i].replace("-", "").replace(":", "")[:15]
        offset = 10.0 if shift_last and k == 4 else 0.0  # one date on a grid shifted by one pixel
        transform = from_bounds(left + offset, bottom, right + offset, top, dn.shape[2], dn.shape[1])
        profile = dict(driver="GTiff", height=dn.shape[1], width=dn.shape[2], count=4, dtype="uint16", crs=crs)
        with rasterio.open(folder / f"eopatch_{when}.tif", "w", transform=transform, nodata=0, **profile) as ds:
            ds.write(dn)
        dates.append(stamps[i][:19])
    return sorted(dates)


def eolearn_grid(real_pack: Path) -> tuple[str, list[float]]:
    """CRS and affine terms a..f of the eo-learn patch: ``bbox.geojson`` spans 101 rows x 100 columns, row 0 north."""
    ring = json.loads((real_pack / EOLEARN / "TestEOPatch" / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = zip(*ring)
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    return "EPSG:32633", [width / 100, 0.0, min(xs), 0.0, -height / 101, max(ys)]


def write_eolearn_cube(real_pack: Path, path: Path, zarr_format: int = 3) -> list[str]:
    """The 5 real L1C reference scenes as a zarr group: array ``bands`` (time, y, x, band) of uint16 DN and
    array ``clouds`` (time, y, x), the real eo-learn cloud mask (CLM) of the same dates; dates ascending.

    REFERENCE_SCENES.npy holds TOA reflectance as 0-1 floats, but the sentinel2_l1c source (like the L1C product)
    is uint16 DN with scale 1e-4: DN = round(x * 10000) is the product's native encoding, so the pipeline reads
    the cube exactly as it would read real L1C data. Returns the timestamps (ISO 8601).
    """
    base = real_pack / EOLEARN
    scenes = np.load(base / "REFERENCE_SCENES.npy", allow_pickle=False)  # (5, 101, 100, 13)
    clouds = np.load(base / "TestEOPatch" / "mask" / "CLM.npy", allow_pickle=False)[..., 0]  # (68, 101, 100)
    stamps = json.loads((base / "TestEOPatch" / "timestamps.json").read_text())
    order = sorted(range(len(REFERENCE_DATES)), key=lambda k: REFERENCE_DATES[k])
    dates = [REFERENCE_DATES[k] for k in order]
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    cube = group.create_array("bands", shape=(5, 101, 100, 13), dtype="uint16", chunks=(1, 64, 64, 13))
    cube[:] = np.round(scenes[order] * 10000).astype(np.uint16)
    mask = group.create_array("clouds", shape=(5, 101, 100), dtype="uint8", chunks=(1, 64, 64))
    mask[:] = clouds[dates]
    crs, transform = eolearn_grid(real_pack)
    group.attrs.update(crs=crs, transform=transform, band_names=L1C_BANDS, timestamps=[stamps[i] for i in dates])
    return [stamps[i] for i in dates]


def eolearn_reference(real_pack: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The real L1C reflectance (5, 101, 100, 13), its cloud mask (5, 101, 100) and timestamps, dates ascending."""
    base = real_pack / EOLEARN
    scenes = np.load(base / "REFERENCE_SCENES.npy", allow_pickle=False)
    clouds = np.load(base / "TestEOPatch" / "mask" / "CLM.npy", allow_pickle=False)[..., 0]
    stamps = json.loads((base / "TestEOPatch" / "timestamps.json").read_text())
    order = sorted(range(len(REFERENCE_DATES)), key=lambda k: REFERENCE_DATES[k])
    dates = [REFERENCE_DATES[k] for k in order]
    return scenes[order], clouds[dates], [stamps[i] for i in dates]


def read_samples(out_dir: Path, stream: str | None = None, stored: bool = False) -> list[dict]:
    """Every sample of a built dataset (of one stream, if given) as ``{ext: array or metadata}``, in shard order.

    Reads the tars directly, so a test sees exactly the bytes the build wrote; source-encoded tiles are
    normalized as the loader does (``ringmoe.core.tiles``) unless ``stored``."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    decoders = manifest_decoders(manifest)
    samples: dict[str, dict] = {}
    for entry in manifest["shards"]:
        if stream is not None and entry["stream"] != stream:
            continue
        with tarfile.open(out_dir / entry["path"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                value = json.loads(data) if ext == "json" else np.load(io.BytesIO(data), allow_pickle=False)
                samples.setdefault(key, {})[ext] = value
    for key, sample in samples.items():
        sample["__key__"] = key
    if stored:
        return list(samples.values())
    return [normalized_arrays(sample, sample["json"], decoders) for sample in samples.values()]

"""Every supported real sample of the shared pack, one test per modality group: build from a YAML (strict, so a
real sample is never quarantined) -> ``verify --deep`` -> physical properties of the values the shards hold,
checked against the source rasters read independently with rasterio/numpy.

The source without a real sample (Gaofen-2 PMS) runs on GeoTIFFs written with its registered band layout, dtype
and nodata, filled with the real WorldView-2 blue/green/red/NIR radiometry.

Not ingested, and why:
- ``spacenet6_worldview2/pan1.tif``: a single panchromatic band; no modality group takes one band.
- ``spacenet6_capella_sar/sar_masked.tif``: 4-channel dB intensity, a derived product that is not a registered
  source (test_build_verify uses it as NaN-masked SAR).
- ``landsat7_etm/LE07_*_B1.tif``: one band only; the optical group needs red, green and blue.
- ``landsat8_oli/*_B2_60m.TIF``: B2 resampled to 60 m, not on the grid of B3/B4.
- eo-learn NDVI, cloud probability, DEM and LULC arrays: derived products; the L1C reflectance (with the real
  cloud mask as invalid mask) is what is ingested.

The loader round trip of these samples lives in test_real_sensors.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from data_pipeline.build import build_from_file
from data_pipeline.verify import verify
from ringmoe.core.sensors import load_registry
from tests.data_pipeline.helpers import eolearn_reference, read_samples, write_eolearn_cube

LANDSAT8_ID = "LC08_L1TP_224077_20200518_20200518_01_RT"
REGISTRY = load_registry()


def _build_and_verify(tmp_path: Path, **config: Any) -> tuple[dict, Path]:
    """Write ``config`` as the build YAML (JSON is YAML), build it strictly, verify deeply."""
    out = tmp_path / "shards"
    path = tmp_path / "build.yaml"
    path.write_text(json.dumps({"out_dir": str(out), "strict": True, **config}, indent=1))
    manifest = build_from_file(path)
    report = verify(out, deep=True)
    assert report["problems"] == [] and manifest["quarantined"] == []
    assert report["samples"] == manifest["samples"] == sum(e["samples"] for e in manifest["shards"]) > 0
    return manifest, out


def _source_window(files: list[tuple[Path, int]], meta: dict) -> np.ndarray:
    """The raw bands ``(B, h, w)`` under a single-source sample, read straight from its files."""
    row, col = meta["row"], meta["col"]
    height, width = meta["size"]
    planes = []
    for file, index in files:
        with rasterio.open(file) as ds:
            planes.append(ds.read(index, window=Window(col, row, width, height)))
    return np.stack(planes)


def _check_reflectance(samples: list[dict], source: str, files_of) -> None:
    """image == clip(DN * scale) where every band differs from nodata, 0 elsewhere; valid.npy marks exactly
    those pixels."""
    sensor = REGISTRY[source]
    lo, hi = sensor.normalization.clip
    assert samples
    for sample in samples:
        meta, image, valid = sample["json"], sample["image.npy"], sample["valid.npy"]
        assert meta["source"] == source and image.shape[0] == sensor.channels() and np.isfinite(image).all()
        raw = _source_window(files_of(meta["scene"]), meta).astype(np.float64)
        ok = (raw != sensor.nodata).all(axis=0) if sensor.nodata is not None else np.ones(raw.shape[1:], bool)
        np.testing.assert_array_equal(valid, ok.astype(np.uint8))
        expected = np.where(ok, np.clip(raw * sensor.normalization.scale, lo, hi), 0.0)
        np.testing.assert_allclose(image, expected, atol=1e-6)


def _stream(samples: list[dict], source: str) -> list[dict]:
    return [s for s in samples if s["json"].get("source") == source]


def test_multispectral_real_samples(real_pack, tmp_path):
    """BigEarthNet Sentinel-2 L2A (one file per band), WorldView-2 MS, and the eo-learn Sentinel-2 L1C series as
    a zarr time cube (time, y, x, band) with the real cloud mask as invalid mask."""
    stamps = write_eolearn_cube(real_pack, tmp_path / "eopatch.zarr")
    s2_dir = real_pack / "sentinel2_l2a_bigearthnet"
    ms1 = real_pack / "spacenet6_worldview2" / "ms1.tif"
    l1c = {
        "source": "sentinel2_l1c",
        "scenes": str(tmp_path / "eopatch.zarr"),
        "array": "bands",
        "dims": ["time", "y", "x", "band"],
        "invalid_mask": "clouds",
    }
    manifest, out = _build_and_verify(
        tmp_path,
        tile_size=50,
        inputs=[
            {"source": "sentinel2_l2a", "scenes": str(s2_dir / "*"), "band_files": "{scene}_{band}.tif"},
            {"source": "worldview2", "scenes": str(ms1)},
        ],
        sequences=[{"name": "l1c_eopatch", "input": l1c}],
    )
    assert manifest["sources"]["sentinel2_l2a"]["samples"] == 6 * 4  # 120 px patches: 2 x 2 tiles of 50
    assert manifest["sources"]["worldview2"]["samples"] == 6 * 6  # 300 x 300 px
    assert manifest["streams"]["l1c_eopatch"]["samples"] == 4  # 101 x 100 px
    samples = read_samples(out)
    s2_bands = REGISTRY["sentinel2_l2a"].modality_bands
    _check_reflectance(
        _stream(samples, "sentinel2_l2a"),
        "sentinel2_l2a",
        lambda scene: [(s2_dir / scene / f"{scene}_{band}.tif", 1) for band in s2_bands],
    )
    _check_reflectance(_stream(samples, "worldview2"), "worldview2", lambda _: [(ms1, i) for i in (1, 2, 3, 4)])
    # Vegetation reflects far more near-infrared than red: true of every BigEarthNet patch here (B08 vs B04).
    for sample in _stream(samples, "sentinel2_l2a"):
        assert sample["image.npy"][3].mean() > sample["image.npy"][2].mean()

    scenes, clouds, _ = eolearn_reference(real_pack)
    sequences = [s for s in samples if s["json"]["kind"] == "sequence"]
    assert len(sequences) == 4
    for sample in sequences:
        meta, image, valid = sample["json"], sample["image.npy"], sample["valid.npy"]
        assert meta["timestamps"] == stamps and image.shape == (5, 4, 50, 50)
        rows, cols = slice(meta["row"], meta["row"] + 50), slice(meta["col"], meta["col"] + 50)
        np.testing.assert_array_equal(valid, 1 - clouds[:, rows, cols])  # the real cloud mask, date by date
        # Two of the five dates (2015-07-31, 2015-08-20) are cloud-covered over the whole patch.
        assert meta["valid_fraction_per_step"] == [1.0, 0.0, 0.0, 1.0, 1.0]
        dn = np.round(scenes[:, rows, cols][..., [1, 2, 3, 7]] * 10000).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(image, np.where(valid[:, None] == 1, dn * 1e-4, 0.0), atol=1e-6)


def test_sar_amplitude_real_samples(real_pack, tmp_path):
    s1_dir = real_pack / "sentinel1_grd_bigearthnet"
    manifest, out = _build_and_verify(
        tmp_path,
        tile_size=60,
        inputs=[{"source": "sentinel1_grd", "scenes": str(s1_dir / "*"), "band_files": "{scene}_{band}.tif"}],
    )
    assert manifest["sources"]["sentinel1_grd"]["samples"] == 6 * 4
    assert manifest["sources"]["sentinel1_grd"]["channel_names"] == ["VV", "VH", "VV_VH_ratio"]
    lo, hi = REGISTRY["sentinel1_grd"].normalization.clip
    for sample in read_samples(out):
        meta, image = sample["json"], sample["image.npy"]
        assert sample["valid.npy"].all() and image.min() >= 0.0 and image.max() <= 1.0
        db = lo + image[:2].astype(np.float64) * (hi - lo)  # back to sigma0 in dB
        raw = _source_window([(s1_dir / meta["scene"] / f"{meta['scene']}_{p}.tif", 1) for p in ("VV", "VH")], meta)
        np.testing.assert_allclose(db, np.clip(raw, lo, hi), atol=1e-4)
        (ratio_spec,) = REGISTRY["sentinel1_grd"].derived_channels
        r_lo, r_hi = ratio_spec.clip
        np.testing.assert_allclose(r_lo + image[2] * (r_hi - r_lo), np.clip(db[0] - db[1], r_lo, r_hi), atol=1e-4)
        # Co-polarized backscatter over land is several dB above cross-polarized, and both lie in the usual
        # Sentinel-1 IW range.
        assert db[0].mean() > db[1].mean() + 3 and -25 < db[1].mean() < db[0].mean() < -3


def test_sar_complex_real_samples(real_pack, tmp_path):
    capella = real_pack / "spacenet6_capella_sar"
    manifest, out = _build_and_verify(
        tmp_path,
        tile_size=50,
        inputs=[{"source": "capella_quadpol", "scenes": str(capella), "band_files": "sar_{band_lower}.tif"}],
    )
    assert manifest["sources"]["capella_quadpol"]["samples"] == 16  # 200 x 200 px
    names = manifest["sources"]["capella_quadpol"]["channel_names"]
    assert names == ["HH_I", "HH_Q", "HV_I", "HV_Q", "VH_I", "VH_Q", "VV_I", "VV_Q"]
    sensor = REGISTRY["capella_quadpol"]
    lo, hi = sensor.normalization.clip
    images = []
    for sample in read_samples(out):
        meta, image = sample["json"], sample["image.npy"]
        assert image.shape == (8, 50, 50) and sample["valid.npy"].all()  # SLC: no zero-magnitude pixel here
        raw = _source_window([(capella / f"sar_{p.lower()}.tif", 1) for p in sensor.modality_bands], meta)
        iq = np.stack([raw.real, raw.imag], axis=1).reshape(8, 50, 50) * sensor.normalization.scale
        np.testing.assert_allclose(image, np.clip(iq, lo, hi), rtol=1e-6, atol=1e-7)
        images.append(image)
    channels = np.concatenate(images, axis=1).reshape(8, -1).astype(np.float64)
    assert (channels != 0).mean(axis=1).min() > 0.99  # I and Q both carry signal in every polarization
    # Single-look complex phase is uniform: I and Q are zero-mean and equally strong in each polarization.
    assert (np.abs(channels.mean(axis=1)) < 0.05 * channels.std(axis=1)).all()
    ratio = channels[0::2].std(axis=1) / channels[1::2].std(axis=1)
    np.testing.assert_allclose(ratio, 1.0, atol=0.1)


def test_optical_real_samples(real_pack, tmp_path):
    rgb = real_pack / "spacenet6_worldview2" / "rgb_unmasked.tif"
    rgb_byte = real_pack / "landsat7_etm" / "RGB.byte.tif"
    landsat8 = real_pack / "landsat8_oli"
    manifest, out = _build_and_verify(
        tmp_path,
        tile_size=96,
        inputs=[
            {"source": "worldview2_rgb", "scenes": str(rgb)},
            # file band 1 = red = ETM+ B3, 2 = green = B2, 3 = blue = B1
            {"source": "landsat7_etm", "scenes": str(rgb_byte), "band_indexes": {"B3": 1, "B2": 2, "B1": 3}},
            # the optical bands of OLI are B4 (red), B3 (green), B2 (blue); B2_60m is on another grid
            {"source": "landsat8_oli", "scenes": str(landsat8), "band_files": f"{LANDSAT8_ID}_{{band}}.TIF"},
        ],
    )
    sources = manifest["sources"]
    assert sources["worldview2_rgb"]["samples"] == 4  # 200 x 200 px
    assert all(sources[s]["channels"] == 3 for s in ("worldview2_rgb", "landsat7_etm", "landsat8_oli"))
    samples = read_samples(out)
    _check_reflectance(_stream(samples, "worldview2_rgb"), "worldview2_rgb", lambda _: [(rgb, i) for i in (1, 2, 3)])
    _check_reflectance(_stream(samples, "landsat7_etm"), "landsat7_etm", lambda _: [(rgb_byte, i) for i in (1, 2, 3)])
    _check_reflectance(
        _stream(samples, "landsat8_oli"),
        "landsat8_oli",
        lambda _: [(landsat8 / f"{LANDSAT8_ID}_{band}.TIF", 1) for band in ("B4", "B3", "B2")],
    )

    # RGB.byte.tif is a rotated scene in a zero-valued collar (a third of its pixels): the tiles mostly in the
    # collar are skipped and counted, and the kept tiles along its edge carry the collar as invalid pixels.
    tiles = (718 // 96) * (791 // 96)
    skipped = manifest["streams"]["landsat7_etm"]["skipped"]["low_valid_fraction"]
    assert sources["landsat7_etm"]["samples"] + skipped == tiles and skipped >= 10
    fractions = [s["json"]["valid_fraction"] for s in _stream(samples, "landsat7_etm")]
    assert min(fractions) < 1.0 and all(f >= 0.5 for f in fractions)
    # Landsat-8's collar is only at the corners of this crop: almost every tile is kept.
    assert sources["landsat8_oli"]["samples"] >= (1515 // 96) * (2006 // 96) - 10


def test_gaofen2_pms_with_its_band_layout(real_pack, tmp_path):
    """No Gaofen-2 scene is redistributable. Stand-ins in its registered format (4 bands blue, green, red, NIR;
    uint16 10-bit DN; nodata 0; 4 m): the real WorldView-2 11-bit MS radiometry of the same four bands halved to
    10 bits, split into two scenes, each with a 40 px nodata collar on its west edge as real scene edges have."""
    sensor = REGISTRY["gaofen2_pms"]
    assert (sensor.dtype, len(sensor.modality_bands), sensor.nodata) == ("uint16", 4, 0)
    with rasterio.open(real_pack / "spacenet6_worldview2" / "ms1.tif") as ds:
        ms = ds.read()  # (4, 300, 300) float64 holding integer 11-bit DN >= 1
    dn = ((ms.astype(np.uint32) + 1) // 2).astype(sensor.dtype)  # rounds up, so no real pixel becomes nodata 0
    for number, rows in enumerate((slice(0, 150), slice(150, 300))):
        scene = dn[:, rows].copy()
        scene[:, :, :40] = 0
        profile = dict(driver="GTiff", height=150, width=300, count=4, dtype=sensor.dtype, nodata=sensor.nodata)
        profile.update(crs="EPSG:32650", transform=from_origin(500000, 4000000 - number * 600, 4.0, 4.0))
        with rasterio.open(tmp_path / f"GF2_PMS1_{number}.tif", "w", **profile) as ds:
            ds.write(scene)
    manifest, out = _build_and_verify(
        tmp_path, tile_size=50, inputs=[{"source": "gaofen2_pms", "scenes": str(tmp_path / "GF2_PMS1_*.tif")}]
    )
    # 3 x 6 tiles per scene; the collar leaves 10 of 50 columns valid in the first tile column: skipped.
    assert manifest["sources"]["gaofen2_pms"]["samples"] == 2 * 3 * 5
    assert manifest["skipped"] == {"low_valid_fraction": 2 * 3}
    samples = read_samples(out)
    _check_reflectance(samples, "gaofen2_pms", lambda scene: [(tmp_path / f"{scene}.tif", i) for i in (1, 2, 3, 4)])
    assert max(s["image.npy"].max() for s in samples) <= 1023 * sensor.normalization.scale + 1e-6  # 10-bit

"""Every supported real sample of the shared pack goes build -> verify --deep -> streaming loader, one test per
modality group; the source without a real sample (Gaofen-2 PMS) runs on GeoTIFFs written with its real band
layout and dtype.

Not ingested, and why: ``spacenet6_worldview2/pan1.tif`` (one panchromatic band, no modality group takes it),
``spacenet6_capella_sar/sar_masked.tif`` (4-band dB intensity derived product, not a registered source; it is
used as a NaN-masked SAR test in test_build_verify), ``landsat7_etm/LE07_*_B1.tif`` (a single band; optical
needs red, green and blue), the eo-learn NDVI/mask/DEM arrays (derived products; the L1C reflectance is used).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_bounds

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec
from data_pipeline.verify import verify
from ringmoe.config.schema import DataConfig
from tests.data.helpers import flat_keys, source_keys, take
from tests.data_pipeline.helpers import write_eolearn_dates

LANDSAT8_ID = "LC08_L1TP_224077_20200518_20200518_01_RT"


def _build_verify_stream(tmp_path: Path, modality: str, inputs: list[InputSpec], **tiling) -> dict:
    """Build strictly (a real sample must never be quarantined), verify deeply, then stream every source of the
    group alone for one epoch and check the loader hands out exactly the samples the build wrote."""
    out = tmp_path / "shards"
    manifest = build(BuildConfig(inputs=inputs, out_dir=str(out), strict=True, **tiling))
    report = verify(out, deep=True)
    assert report["samples"] == manifest["samples"] > 0 and manifest["quarantined"] == []
    sources = sorted({spec.source for spec in inputs})
    for source in sources:
        count = manifest["sources"][source]["samples"]
        assert count > 0, source
        weights = {s: float(s == source) for s in sources}
        config = DataConfig(shards=str(out), modalities=[modality], batch_size_per_modality=4, source_weights=weights)
        batches = take(config, math.ceil(count / 4))
        keys = flat_keys(batches, modality)
        assert set(keys[:count]) == source_keys(out, source) and len(set(keys[:count])) == count  # one epoch
        images = batches[0].images[modality]
        assert images.dtype.is_floating_point and images.shape[1] == manifest["sources"][source]["channels"]
        assert bool(images.isfinite().all())
    return manifest


def test_multispectral_real_samples(real_pack, tmp_path):
    """BigEarthNet Sentinel-2 L2A patches (one file per band), WorldView-2 MS, and the 5 real Sentinel-2 L1C
    reference scenes of the eo-learn time series as one GeoTIFF per date."""
    write_eolearn_dates(real_pack, tmp_path / "l1c")
    inputs = [
        InputSpec("sentinel2_l2a", str(real_pack / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif"),
        InputSpec("worldview2", str(real_pack / "spacenet6_worldview2" / "ms1.tif")),
        InputSpec("sentinel2_l1c", str(tmp_path / "l1c" / "*.tif")),
    ]
    manifest = _build_verify_stream(tmp_path, "multispectral", inputs, tile_size=48, tile_stride=36)
    assert manifest["sources"]["sentinel2_l2a"]["samples"] == 6 * 9  # 120 px patches: 3 x 3 tiles each
    assert manifest["sources"]["sentinel2_l1c"]["samples"] == 5 * 4  # 101 x 100 px: 2 x 2 tiles per date


def test_sar_amplitude_real_samples(real_pack, tmp_path):
    inputs = [
        InputSpec("sentinel1_grd", str(real_pack / "sentinel1_grd_bigearthnet" / "*"), band_files="{scene}_{band}.tif")
    ]
    manifest = _build_verify_stream(tmp_path, "sar_amplitude", inputs, tile_size=60)
    assert manifest["sources"]["sentinel1_grd"]["samples"] == 6 * 4


def test_sar_complex_real_samples(real_pack, tmp_path):
    inputs = [InputSpec("capella_quadpol", str(real_pack / "spacenet6_capella_sar"), band_files="sar_{band_lower}.tif")]
    manifest = _build_verify_stream(tmp_path, "sar_complex", inputs, tile_size=50)
    assert manifest["sources"]["capella_quadpol"]["samples"] == 16
    assert manifest["sources"]["capella_quadpol"]["channel_names"][:2] == ["HH_I", "HH_Q"]


def test_optical_real_samples(real_pack, tmp_path):
    inputs = [
        InputSpec("worldview2_rgb", str(real_pack / "spacenet6_worldview2" / "rgb_unmasked.tif")),
        InputSpec(
            "landsat7_etm", str(real_pack / "landsat7_etm" / "RGB.byte.tif"), band_indexes={"B3": 1, "B2": 2, "B1": 3}
        ),
        InputSpec("landsat8_oli", str(real_pack / "landsat8_oli"), band_files=f"{LANDSAT8_ID}_{{band}}.TIF"),
    ]
    manifest = _build_verify_stream(tmp_path, "optical", inputs, tile_size=128, min_valid_fraction=0.5)
    # RGB.byte.tif has a wide zero-valued collar: its edge tiles are skipped and counted, not written.
    assert manifest["streams"]["landsat7_etm"]["skipped"]["low_valid_fraction"] > 0
    assert manifest["sources"]["landsat8_oli"]["samples"] >= 11 * 15 - 10  # 1515 x 2006 px, a few zero corners


def test_gaofen2_pms_from_its_band_layout(tmp_path):
    """No Gaofen-2 file is redistributable: 4-band uint16 PMS GeoTIFFs (10-bit DN, nodata 0, 4 m) stand in."""
    rng = np.random.default_rng(0)
    for number in range(2):
        dn = rng.integers(1, 1024, size=(4, 96, 128), dtype=np.uint16)
        dn[:, :, :20] = 0  # a nodata collar, as on real scene edges
        transform = from_bounds(500000, 4000000, 500000 + 128 * 4, 4000000 + 96 * 4, 128, 96)
        profile = dict(driver="GTiff", height=96, width=128, count=4, dtype="uint16", crs="EPSG:32650", nodata=0)
        with rasterio.open(tmp_path / f"GF2_PMS1_{number}.tif", "w", transform=transform, **profile) as ds:
            ds.write(dn)
    inputs = [InputSpec("gaofen2_pms", str(tmp_path / "GF2_PMS1_*.tif"))]
    manifest = _build_verify_stream(tmp_path, "multispectral", inputs, tile_size=32)
    assert (
        manifest["sources"]["gaofen2_pms"]["samples"] == 2 * 3 * 3
    )  # 3 x 4 tiles; the 20 px collar costs the first column
    assert manifest["skipped"]["low_valid_fraction"] == 2 * 3


def test_l1c_values_survive_the_round_trip(real_pack, tmp_path):
    """The loader's first L1C image equals the real reflectance of that tile (DN * 1e-4 == the npy value)."""
    write_eolearn_dates(real_pack, tmp_path / "l1c")
    out, tile = tmp_path / "shards", 48
    build(
        BuildConfig(
            inputs=[InputSpec("sentinel2_l1c", str(tmp_path / "l1c" / "*.tif"))], out_dir=str(out), tile_size=tile
        )
    )
    batch = take(DataConfig(shards=str(out), modalities=["multispectral"], batch_size_per_modality=1), 1)[0]
    key = batch.keys["multispectral"][0]
    scenes = np.load(real_pack / "sentinel2_l1c_timeseries_eolearn" / "REFERENCE_SCENES.npy", allow_pickle=False)
    stamps = json.loads(
        (real_pack / "sentinel2_l1c_timeseries_eolearn" / "TestEOPatch" / "timestamps.json").read_text()
    )
    k = next(k for k, i in enumerate([2, 1, 4, 3, 0]) if stamps[i].replace("-", "").replace(":", "")[:15] in key)
    row, col = (int(part[1:]) for part in key.split("-")[-2:])
    expected = scenes[k][row : row + tile, col : col + tile][..., [1, 2, 3, 7]].transpose(2, 0, 1)
    np.testing.assert_allclose(batch.images["multispectral"][0].numpy(), np.round(expected * 1e4) * 1e-4, atol=1e-6)

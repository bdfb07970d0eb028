"""Sentinel-1 GRD .SAFE products (made from the demo's real BigEarthNet-S1 patches: tests/data_pipeline/
grd_products.py): calibrated with the annotation LUT and put on a map grid through the GCPs, the tiles give back
the patches' sigma0 in dB; a GCP-only raster given alone, or a product missing its calibration, is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec
from ringmoe.core.errors import DataError
from tests.data_pipeline.grd_products import make_grd
from tests.data_pipeline.helpers import DEMO, read_samples

PATCH = sorted(p for p in (DEMO / "sentinel1_grd_bigearthnet").iterdir() if p.is_dir())[0]


def test_a_grd_product_gives_back_the_patch_sigma0_on_its_grid(tmp_path):
    product, expected_db, (transform, crs) = make_grd(PATCH, tmp_path / "products")
    spec = InputSpec("sentinel1_grd", str(product), crs=crs.to_string())
    out = tmp_path / "out"
    manifest = build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=120, min_valid_fraction=0.0))
    assert manifest["samples"] == 1 and not manifest["quarantined"]
    (stored,) = read_samples(out, stored=True)
    meta = stored["json"]
    assert meta["crs"] == crs.to_string() and meta["transform"][:6] == list(transform)[:6]
    # Map grid = the patch's grid, so each tile pixel maps onto one radar pixel, sigma0 = DN^2 / A^2, up to the
    # thin-plate spline's residual: an offset of d px mixes in d of a neighbour's power, an error of at most
    # 10 log10(1 + d * max neighbour / own power) dB; d <= 1e-3 px bounds the spline through exact GCPs.
    raw = stored["image.npy"]
    assert raw.dtype == np.float32 and meta["encoding"] == "source"
    valid = np.isfinite(expected_db).all(axis=0)
    power = np.pad(10 ** (np.nan_to_num(expected_db, nan=-99.0) / 10), ((0, 0), (1, 1), (1, 1)), mode="edge")
    neighbours = np.max([power[:, 1 + i : 121 + i, 1 + j : 121 + j] for i in (-1, 0, 1) for j in (-1, 0, 1)], axis=0)
    bound = 10 * np.log10(1 + 1e-3 * neighbours / power[:, 1:-1, 1:-1]) + 1e-4
    assert (np.abs(raw - expected_db)[:, valid] <= bound[:, valid]).all()
    assert np.median(np.abs(raw - expected_db)[:, valid]) < 1e-3
    assert meta["valid_fraction"] == pytest.approx(valid.mean())


def test_without_a_crs_the_scene_takes_the_utm_zone_of_its_centre_and_its_start_time(tmp_path):
    product, _, _ = make_grd(PATCH, tmp_path / "products")
    spec = InputSpec("sentinel1_grd", str(product))
    out = tmp_path / "out"
    build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=64, min_valid_fraction=0.5))
    samples = read_samples(out)
    assert samples and all(s["json"]["crs"].startswith("EPSG:326") for s in samples)
    assert all(np.isfinite(s["image.npy"]).all() for s in samples)


def test_a_gcp_only_measurement_given_alone_is_refused_by_name(tmp_path):
    product, _, _ = make_grd(PATCH, tmp_path / "products")
    measurement = next((product / "measurement").glob("*-vv-*.tiff"))  # uint16 under an 8-bit source: the
    spec = InputSpec("worldview2_rgb", str(measurement))  # GCPs are what is named first, before bands or dtype
    with pytest.raises(DataError, match="georeferenced by 49 GCPs only"):
        build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "o"), strict=True))


def test_a_product_without_its_calibration_is_quarantined_by_name(tmp_path):
    product, _, _ = make_grd(PATCH, tmp_path / "products")
    next((product / "annotation" / "calibration").glob("*-vh-*.xml")).unlink()
    manifest = build(BuildConfig(inputs=[InputSpec("sentinel1_grd", str(product))], out_dir=str(tmp_path / "o")))
    (quarantined,) = manifest["quarantined"]
    assert "calibration annotation" in quarantined["reason"] and product.name in json.dumps(quarantined)

"""Sentinel-2 .SAFE products as scenes (made from the demo's real BigEarthNet patches: tests/data_pipeline/
safe_products.py): every value equals a build of the same patches as GeoTIFFs once the product's offset is
taken off, the product's own cloud mask marks pixels invalid, coarser bands land on the 10 m grid, and a product
whose metadata contradicts the source stops with its name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, SequenceSpec
from tests.data_pipeline.helpers import DEMO, read_samples
from tests.data_pipeline.safe_products import make_product

PATCHES = sorted(p for p in (DEMO / "sentinel2_l2a_bigearthnet").iterdir() if p.is_dir())[:2]


def _by_patch(out: Path) -> dict[tuple[str, int, int], dict]:
    """Samples by (patch name, row, col); a product's scene name ends with the patch it was made from."""
    found = {}
    for sample in read_samples(out):
        meta = sample["json"]
        patch = next(p.name for p in PATCHES if meta["scene"].removesuffix(".SAFE").endswith(p.name))
        found[(patch, meta["row"], meta["col"])] = sample
    return found


def _geotiff_build(tmp_path: Path) -> dict:
    spec = InputSpec("sentinel2_l2a", str(DEMO / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif")
    out = tmp_path / "tif"
    build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=60, min_valid_fraction=0.0))
    return {key: s for key, s in _by_patch_all(out).items() if key[0] in {p.name for p in PATCHES}}


def _by_patch_all(out: Path) -> dict[tuple[str, int, int], dict]:
    return {(s["json"]["scene"], s["json"]["row"], s["json"]["col"]): s for s in read_samples(out)}


def test_l2a_products_give_the_geotiff_values_with_the_scl_clouds_masked(tmp_path):
    for patch in PATCHES:
        make_product(patch, tmp_path / "products")
    spec = InputSpec("sentinel2_l2a", str(tmp_path / "products" / "*.SAFE"))
    out = tmp_path / "safe"
    manifest = build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=60, min_valid_fraction=0.0))
    assert manifest["samples"] == 8 and not manifest["quarantined"]
    stored = read_samples(out, stored=True)
    assert stored[0]["image.npy"].dtype == np.uint16 and stored[0]["json"]["band_offsets"] == [-1000.0] * 4
    reference, safe = _geotiff_build(tmp_path), _by_patch(out)
    assert len(reference) == 8 and set(reference) == set(safe)
    clouds = 0
    for (patch, row, col), tif in reference.items():
        product = safe[(patch, row, col)]
        valid = product["valid.npy"].astype(bool)
        # The SCL cloud block (rows 20..27, cols 40..47 at 10 m) is invalid; everything else as in the GeoTIFF.
        expected_valid = tif["valid.npy"].astype(bool).copy()
        block = np.zeros((120, 120), bool)
        block[20:28, 40:48] = True
        expected_valid &= ~block[row : row + 60, col : col + 60]
        assert np.array_equal(valid, expected_valid)
        clouds += int(block[row : row + 60, col : col + 60].sum())
        assert np.array_equal(product["image.npy"][:, valid], tif["image.npy"][:, valid])  # bit for bit
        assert product["json"]["bounds"] == tif["json"]["bounds"] and product["json"]["crs"] == tif["json"]["crs"]
    assert clouds == 64 * len(PATCHES)


def test_product_start_times_order_a_sequence(tmp_path):
    for patch in PATCHES:  # two footprints, one date each: the dates come from PRODUCT_START_TIME
        make_product(patch, tmp_path / "products")
    spec = InputSpec("sentinel2_l2a", str(tmp_path / "products" / "*.SAFE"))
    sequence = SequenceSpec("dates", input=spec, footprint=r"_(\d+_\d+)\.SAFE$", min_steps=1)
    out = tmp_path / "out"
    build(BuildConfig(sequences=[sequence], out_dir=str(out), tile_size=120, min_valid_fraction=0.0))
    stamps = sorted(stamp for s in read_samples(out) for stamp in s["json"]["timestamps"])
    assert stamps == ["2017-06-13T10:10:31.026000", "2017-06-17T11:33:21.026000"]


def test_l1c_baselines_before_and_after_04_00(tmp_path):
    new = make_product(PATCHES[0], tmp_path / "new", level="L1C", baseline="04.00")
    old = make_product(PATCHES[0], tmp_path / "old", level="L1C", baseline="02.09", offsets=False)
    values = {}
    for name, product in (("new", new), ("old", old)):
        out = tmp_path / f"out_{name}"
        spec = InputSpec("sentinel2_l1c", str(product))
        manifest = build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=120, min_valid_fraction=0.0))
        (sample,) = read_samples(out)
        values[name] = sample
        assert manifest["samples"] == 1
    cloud = np.zeros((120, 120), bool)
    cloud[18:24, 36:42] = True  # MSK_CLASSI opaque clouds, one 60 m pixel (row 3, col 6)
    assert np.array_equal(values["new"]["valid.npy"] == 0, cloud | (values["old"]["valid.npy"] == 0))
    ok = values["new"]["valid.npy"].astype(bool)
    assert np.array_equal(values["new"]["image.npy"][:, ok], values["old"]["image.npy"][:, ok])
    assert "band_offsets" not in read_samples(tmp_path / "out_old", stored=True)[0]["json"]


def test_a_20_m_band_is_repeated_onto_the_10_m_grid_and_dates_order_a_sequence(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    yaml = (Path(__file__).parents[2] / "configs" / "data" / "sources" / "sentinel2_l2a.yaml").read_text()
    yaml = yaml.replace("name: sentinel2_l2a", "name: s2_red_edge")
    yaml = yaml.replace("- B08\nnormalization", "- B05\nnormalization")
    (sources / "s2_red_edge.yaml").write_text(yaml)
    for patch in PATCHES:
        make_product(patch, tmp_path / "products")
    spec = InputSpec("s2_red_edge", str(tmp_path / "products" / "*.SAFE"))
    out = tmp_path / "out"
    build(
        BuildConfig(
            inputs=[spec], out_dir=str(out), tile_size=120, min_valid_fraction=0.0, extra_sources=[str(sources)]
        )
    )
    samples = _by_patch(out)
    assert len(samples) == len(PATCHES)
    for (name, _, _), sample in samples.items():
        patch = DEMO / "sentinel2_l2a_bigearthnet" / name
        with rasterio.open(patch / f"{patch.name}_B08.tif") as ds:
            b08 = ds.read(1).astype(np.float64)
        coarse = b08.reshape(60, 2, 60, 2).mean(axis=(1, 3)).round()
        expected = np.clip(np.repeat(np.repeat(coarse, 2, 0), 2, 1) * 1e-4, 0, 1.5).astype(np.float32)
        ok = sample["valid.npy"].astype(bool)
        assert np.array_equal(sample["image.npy"][3][ok], expected[ok])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _edit(p, "10000</BOA", "1000</BOA"), r"reflectance = \(DN \+ offset\) / 1000, but source"),
        (lambda p: _edit(p, "BOA_ADD_OFFSET", "OTHER_OFFSET"), "baseline 04.00 but no BOA_ADD_OFFSET"),
        (lambda p: next(p.glob("GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2")).unlink(), r"bands \['B04'\]"),
        (lambda p: next(p.glob("GRANULE/*/IMG_DATA/R20m/*_SCL_20m.jp2")).unlink(), "without its scene classification"),
        (lambda p: (p / "MTD_MSIL2A.xml").write_text("<not xml"), "product metadata is not readable XML"),
    ],
)
def test_a_product_that_contradicts_its_source_is_quarantined_by_name(tmp_path, damage, message):
    product = make_product(PATCHES[0], tmp_path / "products")
    damage(product)
    spec = InputSpec("sentinel2_l2a", str(tmp_path / "products" / "*.SAFE"))
    manifest = build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=60))
    (quarantined,) = manifest["quarantined"]
    assert manifest["samples"] == 0 and product.name in json.dumps(quarantined)
    assert re.search(message, quarantined["reason"]), quarantined


def _edit(product: Path, old: str, new: str) -> None:
    path = product / "MTD_MSIL2A.xml"
    path.write_text(path.read_text().replace(old, new))


def test_the_loader_adds_the_recorded_offsets_as_a_float32_build_does(tmp_path):
    from ringmoe.config.schema import DataConfig
    from tests.data.helpers import same_batches, take

    for patch in PATCHES:
        make_product(patch, tmp_path / "products")
    spec = InputSpec("sentinel2_l2a", str(tmp_path / "products" / "*.SAFE"))
    batches = []
    for encoding in ("source", "float32"):
        out = tmp_path / encoding
        build(
            BuildConfig(inputs=[spec], out_dir=str(out), tile_size=60, min_valid_fraction=0.0, shard_encoding=encoding)
        )
        config = DataConfig(shards=str(out), modalities=["multispectral"], batch_size_per_modality=4, shuffle_buffer=4)
        batches.append(take(config, 3))
    assert same_batches(*batches)

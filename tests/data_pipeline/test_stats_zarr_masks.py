"""Band statistics (``ringmoe-data stats``) and standardization, zarr scenes and time cubes, invalid (cloud)
masks and reduced-resolution reads, on real rasters and the real eo-learn Sentinel-2 L1C series."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.enums import Resampling

from data_pipeline.band_stats import ChannelStats
from data_pipeline.build import build
from data_pipeline.cli import main
from data_pipeline.config import BuildConfig, InputSpec, SequenceSpec
from data_pipeline.stats_job import compute_stats
from data_pipeline.verify import verify
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.normalization import normalize
from ringmoe.core.sensors import load_registry
from tests.data_pipeline.helpers import EOLEARN, L1C_BANDS, S2_SCENE, read_samples, write_eolearn_cube, write_geotiff

S2_INPUT = InputSpec("sentinel2_l2a", str(S2_SCENE), band_files="{scene}_{band}.tif")


def _images(out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, valid) of every sample of a dataset, by key within each shard."""
    manifest = json.loads((out / "manifest.json").read_text())
    found = []
    for entry in manifest["shards"]:
        samples = [s for s in read_samples(out) if f"{s['__key__']}.json" in _names(out / entry["path"])]
        found += [(s["image.npy"], s["valid.npy"]) for s in sorted(samples, key=lambda s: s["__key__"])]
    return found


def _names(shard: Path) -> set[str]:
    with tarfile.open(shard) as tar:
        return set(tar.getnames())


def _s2_whole_scene() -> tuple[np.ndarray, np.ndarray]:
    sensor = load_registry()["sentinel2_l2a"]
    planes = []
    for band in sensor.modality_bands:
        with rasterio.open(S2_SCENE / f"{S2_SCENE.name}_{band}.tif") as ds:
            planes.append(ds.read(1))
    return normalize(np.stack(planes), sensor)


def test_stats_equal_numpy_over_valid_pixels_and_merge_exactly(tmp_path):
    stats = compute_stats(BuildConfig(inputs=[S2_INPUT], out_dir=str(tmp_path), tile_size=50), Path("."))
    entry = stats["sources"]["sentinel2_l2a"]
    image, valid = _s2_whole_scene()
    pixels = image[:, valid.astype(bool)].astype(np.float64)
    assert entry["channels"] == ["B02", "B03", "B04", "B08"] and entry["count"] == [pixels.shape[1]] * 4
    np.testing.assert_allclose(entry["mean"], pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(entry["std"], pixels.std(axis=1), rtol=1e-9)
    np.testing.assert_allclose(entry["min"], pixels.min(axis=1))
    halves = [ChannelStats.empty(4), ChannelStats.empty(4)]
    halves[0].update(image[:, :37], valid[:37])
    halves[1].update(image[:, 37:], valid[37:])
    halves[0].merge(halves[1])
    np.testing.assert_allclose(halves[0].std, pixels.std(axis=1), rtol=1e-12)


def test_parallel_stats_equal_serial(tmp_path):
    inputs = [
        S2_INPUT,
        InputSpec(
            "sentinel1_grd",
            str(S2_SCENE.parents[1] / "sentinel1_grd_bigearthnet" / "*"),
            band_files="{scene}_{band}.tif",
        ),
    ]
    serial = compute_stats(BuildConfig(inputs=inputs, out_dir=str(tmp_path), tile_size=64), Path("."))
    parallel = compute_stats(BuildConfig(inputs=inputs, out_dir=str(tmp_path), tile_size=64), Path("."), workers=2)
    assert parallel == serial and serial["sources"]["sentinel1_grd"]["count"][0] == 6 * 120 * 120


def test_band_stats_standardize_the_shards_and_enter_the_fingerprint(tmp_path, capsys):
    config_path = tmp_path / "build.yaml"
    config_path.write_text(
        f"out_dir: {tmp_path / 'out'}\ntile_size: 60\nband_stats: stats.json\n"
        f"inputs: [{{source: sentinel2_l2a, scenes: '{S2_SCENE}', band_files: '{{scene}}_{{band}}.tif'}}]\n"
    )
    assert main(["stats", "--config", str(config_path), "--out", str(tmp_path / "stats.json")]) == 0
    assert "sentinel2_l2a     B08" in capsys.readouterr().out
    assert main(["build", "--config", str(config_path)]) == 0
    images = _images(tmp_path / "out")
    pixels = np.concatenate([img[:, ok.astype(bool)] for img, ok in images], axis=1)  # 4 tiles = whole scene
    np.testing.assert_allclose(pixels.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(pixels.std(axis=1), 1.0, atol=1e-4)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["streams"]["sentinel2_l2a"]["standardized"]["sentinel2_l2a"][0]) == 4
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")}
    stats = json.loads((tmp_path / "stats.json").read_text())
    stats["sources"]["sentinel2_l2a"]["std"][0] *= 2  # other statistics -> other bytes: resume must rebuild
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    assert main(["build", "--config", str(config_path), "--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")} != stamps


def test_stats_of_other_channels_are_refused(tmp_path):
    stats = {"format_version": 1, "sources": {"sentinel2_l2a": {"channels": ["B02"], "mean": [0], "std": [1]}}}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    config = BuildConfig(inputs=[S2_INPUT], out_dir=str(tmp_path / "o"), band_stats="stats.json")
    with pytest.raises(DataError, match=r"stats\.json: source 'sentinel2_l2a' has channels \['B02'\]"):
        build(config, tmp_path)


def test_geotiff_invalid_mask_joins_the_valid_mask(tmp_path):
    scene = tmp_path / S2_SCENE.name
    scene.mkdir()
    for band_file in S2_SCENE.glob("*.tif"):
        (scene / band_file.name).write_bytes(band_file.read_bytes())
    clouds = np.zeros((1, 120, 120), dtype=np.uint8)
    clouds[0, 10:40, 20:50] = 255
    with rasterio.open(scene / f"{S2_SCENE.name}_B02.tif") as ds:
        crs, origin = ds.crs.to_string(), (ds.transform.c, ds.transform.f)
    write_geotiff(scene / "clouds.tif", clouds, crs=crs, origin=origin)
    spec = InputSpec("sentinel2_l2a", str(scene), band_files="{scene}_{band}.tif", invalid_mask="clouds.tif")
    build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=120, min_valid_fraction=0.1))
    [(image, valid)] = _images(tmp_path / "out")
    assert (valid[10:40, 20:50] == 0).all() and (image[:, 10:40, 20:50] == 0).all()
    assert valid.sum() == 120 * 120 - 30 * 30


def test_downsample_reads_overviews_and_coarsens_the_grid(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 10000, size=(4, 256, 256)).astype(np.uint16)
    path = write_geotiff(tmp_path / "ms.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2], Resampling.average)
    spec = InputSpec("gaofen2_pms", str(path), downsample=2)
    build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=64))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == 4  # 128 x 128 after downsampling: 2 x 2 tiles of 64
    first = read_samples(tmp_path / "out")[0]
    meta, image = first["json"], first["image.npy"]
    assert meta["transform"][0] == 20.0 and meta["transform"][4] == -20.0  # 10 m pixels read as 20 m
    block_mean = data[:, :128, :128].reshape(4, 64, 2, 64, 2).astype(np.float64).mean(axis=(2, 4))
    scale = load_registry()["gaofen2_pms"].normalization.scale
    np.testing.assert_allclose(image, np.clip(block_mean * scale, 0, 1), atol=scale)  # overview rounds to uint16


def test_zarr_time_cube_with_real_clouds_becomes_sequences(real_pack, tmp_path):
    stamps = write_eolearn_cube(real_pack, tmp_path / "eopatch.zarr")
    spec = InputSpec(
        "sentinel2_l1c",
        str(tmp_path / "eopatch.zarr"),
        array="bands",
        dims=["time", "y", "x", "band"],
        invalid_mask="clouds",
    )
    out = tmp_path / "out"
    manifest = build(
        BuildConfig(
            sequences=[SequenceSpec("eopatch", input=spec)], out_dir=str(out), tile_size=48, min_valid_fraction=0.3
        )
    )
    assert manifest["streams"]["eopatch"]["samples"] == 4
    verify(out, deep=True)
    [(image, valid), *_] = _images(out)
    clouds = np.load(real_pack / EOLEARN / "TestEOPatch" / "mask" / "CLM.npy", allow_pickle=False)[..., 0]
    dates = [json.loads((real_pack / EOLEARN / "TestEOPatch" / "timestamps.json").read_text()).index(s) for s in stamps]
    assert image.shape == (5, 4, 48, 48)
    np.testing.assert_array_equal(valid, 1 - clouds[dates][:, :48, :48])  # the real cloud mask, per date
    scenes = np.load(real_pack / EOLEARN / "REFERENCE_SCENES.npy", allow_pickle=False)
    k = [2, 1, 4, 3, 0].index(dates[-1])
    expected = np.round(scenes[k][:48, :48][..., [1, 2, 3, 7]].transpose(2, 0, 1) * 1e4) * 1e-4
    np.testing.assert_allclose(image[-1], np.where(valid[-1] == 1, expected, 0), atol=1e-6)


def test_zarr_single_image_and_its_errors(real_pack, tmp_path):
    write_eolearn_cube(real_pack, tmp_path / "cube.zarr")
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="w")
    image = one.create_array("image", shape=(13, 101, 100), dtype="uint16")
    image[:] = zarr.open_group(str(tmp_path / "cube.zarr"))["bands"][4].transpose(2, 0, 1)
    one.attrs.update(crs="EPSG:32633", transform=[10.0, 0.0, 465180.0, 0.0, -10.0, 5080255.0], band_names=L1C_BANDS)
    spec = InputSpec("sentinel2_l1c", str(tmp_path / "one.zarr"), array="image")
    manifest = build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=50, strict=True))
    assert manifest["sources"]["sentinel2_l1c"]["samples"] == 4
    verify(tmp_path / "out", deep=True)

    del one.attrs["crs"]
    with pytest.raises(DataError, match=r"one\.zarr \(array 'image'\): attribute 'crs' missing"):
        build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "o2"), strict=True))
    cube_as_image = InputSpec(
        "sentinel2_l1c", str(tmp_path / "cube.zarr"), array="bands", dims=["time", "y", "x", "band"]
    )
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.dims.*multi-date cube: list it under `sequences`"):
        build(BuildConfig(inputs=[cube_as_image], out_dir=str(tmp_path / "o3"), strict=True))
    missing = InputSpec("sentinel2_l1c", str(tmp_path / "cube.zarr"), array="nope")
    with pytest.raises(DataError, match=r"no array 'nope' in the store; arrays: \['bands', 'clouds'\]"):
        build(BuildConfig(inputs=[missing], out_dir=str(tmp_path / "o4"), strict=True))


def _s2_with_clouds(tmp_path: Path, clouds: np.ndarray, name: str = "clouds.tif", **grid) -> Path:
    """A copy of a real S2 scene with a cloud mask beside it, on the scene's grid unless ``grid`` says otherwise."""
    scene = tmp_path / S2_SCENE.name
    scene.mkdir(exist_ok=True)
    for band_file in S2_SCENE.glob("*.tif"):
        (scene / band_file.name).write_bytes(band_file.read_bytes())
    with rasterio.open(scene / f"{S2_SCENE.name}_B02.tif") as ds:
        defaults = {"crs": ds.crs.to_string(), "origin": (ds.transform.c, ds.transform.f)}
    write_geotiff(scene / name, clouds, **{**defaults, **grid})
    return scene


def test_invalid_mask_on_another_grid_names_the_file(tmp_path):
    scene = _s2_with_clouds(tmp_path, np.zeros((1, 120, 120), np.uint8), origin=(0.0, 0.0))
    spec = InputSpec("sentinel2_l2a", str(scene), band_files="{scene}_{band}.tif", invalid_mask="clouds.tif")
    with pytest.raises(DataError, match=r"clouds\.tif: invalid mask transform differs from the scene's"):
        build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), strict=True))
    write_geotiff(scene / "clouds.tif", np.zeros((1, 60, 60), np.uint8))
    with pytest.raises(DataError, match=r"clouds\.tif: invalid mask grid \(60, 60\)"):
        build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), strict=True))
    spec.invalid_mask = "{scene}_{band}_clouds.tif"
    with pytest.raises(ConfigError, match=r"invalid_mask'.*unknown placeholder\(s\) \['band'\]; allowed: \['scene'\]"):
        build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out")))


def test_downsampled_mask_marks_every_coarse_pixel_with_a_cloud_under_it(tmp_path):
    """Resampling a sparse mask to 1/2 resolution would lose most single-pixel clouds; none may be lost."""
    rng = np.random.default_rng(3)
    clouds = (rng.random((1, 120, 120)) < 0.03).astype(np.uint8)
    scene = _s2_with_clouds(tmp_path, clouds)
    spec = InputSpec(
        "sentinel2_l2a", str(scene), band_files="{scene}_{band}.tif", invalid_mask="clouds.tif", downsample=2
    )
    build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=60, min_valid_fraction=0.0))
    [(_, valid)] = _images(tmp_path / "out")
    expected = ~clouds[0].reshape(60, 2, 60, 2).any(axis=(1, 3))
    np.testing.assert_array_equal(valid.astype(bool), expected)
    assert 0.05 < 1 - valid.mean() < 0.2  # about 1 - 0.97**4 of the coarse pixels


def test_resume_rebuilds_after_the_invalid_mask_changes(tmp_path):
    clouds = np.zeros((1, 120, 120), dtype=np.uint8)
    scene = _s2_with_clouds(tmp_path, clouds)
    spec = InputSpec("sentinel2_l2a", str(scene), band_files="{scene}_{band}.tif", invalid_mask="clouds.tif")
    config = BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=120)
    first = build(config)
    clouds[0, :30] = 1
    with rasterio.open(scene / "clouds.tif") as ds:
        crs, origin = ds.crs.to_string(), (ds.transform.c, ds.transform.f)
    write_geotiff(scene / "clouds.tif", clouds, crs=crs, origin=origin)
    resumed = build(config, resume=True)
    assert resumed["shards"][0]["sha256"] != first["shards"][0]["sha256"]
    [(_, valid)] = _images(tmp_path / "out")
    assert valid[:30].sum() == 0 and valid[30:].all()


def test_stats_json_is_strict_and_complex_sources_are_not_standardized(tmp_path):
    capella = InputSpec(
        "capella_quadpol", str(S2_SCENE.parents[1] / "spacenet6_capella_sar"), band_files="sar_{band_lower}.tif"
    )
    blank = InputSpec("gaofen2_pms", str(write_geotiff(tmp_path / "gf2.tif", np.zeros((4, 100, 100), np.uint16))))
    config = BuildConfig(inputs=[S2_INPUT, capella, blank], out_dir=str(tmp_path / "out"), tile_size=100)
    stats = compute_stats(config, Path("."))
    assert stats["sources"]["capella_quadpol"]["channels"][:2] == ["HH_I", "HH_Q"]
    gf2 = stats["sources"]["gaofen2_pms"]  # all nodata: no pixel to describe
    assert gf2["count"] == [0] * 4 and gf2["min"] == gf2["max"] == [None] * 4
    (tmp_path / "stats.json").write_text(json.dumps(stats, allow_nan=False))  # strict JSON: no Infinity
    config.band_stats = str(tmp_path / "stats.json")
    with pytest.raises(DataError, match=r"stats\.json: source 'gaofen2_pms' has no valid pixels in channel\(s\)"):
        build(config)
    config.inputs = config.inputs[:2]
    manifest = build(config)
    assert list(manifest["streams"]["sentinel2_l2a"]["standardized"]) == ["sentinel2_l2a"]
    assert manifest["streams"]["capella_quadpol"]["standardized"] == {}  # I and Q keep their phase

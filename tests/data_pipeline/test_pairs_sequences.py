"""Co-registered pairs and multi-date sequences, on real rasters: BigEarthNet S1/S2 patches, the SpaceNet-6
Capella SAR / WorldView-2 footprint, and the eo-learn Sentinel-2 L1C time series."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, PairSpec, SequenceSpec
from data_pipeline.verify import verify
from ringmoe.core.tiles import manifest_decoders, normalized_arrays
from tests.data_pipeline.helpers import DEMO, write_eolearn_dates

S2_INPUT = InputSpec("sentinel2_l2a", str(DEMO / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif")
S1_INPUT = InputSpec("sentinel1_grd", str(DEMO / "sentinel1_grd_bigearthnet" / "*"), band_files="{scene}_{band}.tif")


def _samples(out_dir: Path, entry: dict) -> dict[str, dict]:
    """{key: {ext: decoded}} of one shard, source-encoded tiles normalized as the loader does."""
    decoders = manifest_decoders(json.loads((out_dir / "manifest.json").read_text()))
    found: dict[str, dict] = {}
    with tarfile.open(out_dir / entry["path"]) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            value = json.loads(data) if ext == "json" else np.load(io.BytesIO(data), allow_pickle=False)
            found.setdefault(key, {})[ext] = value
    return {key: normalized_arrays(sample, sample["json"], decoders) for key, sample in found.items()}


def test_bigearthnet_s1_s2_pairs_match_by_footprint(tmp_path):
    out = tmp_path / "pairs"
    config = BuildConfig(
        pairs=[PairSpec("s2_s1", inputs=[S2_INPUT, S1_INPUT])], out_dir=str(out), tile_size=120, min_valid_fraction=0.5
    )
    manifest = build(config)
    stream = manifest["streams"]["s2_s1"]
    assert stream["kind"] == "pair" and stream["groups"] == 6 and stream["unmatched"] == []
    assert manifest["samples"] == 6 and manifest["modalities"] == {}  # pairs do not feed the single streams
    entry = manifest["shards"][0]
    assert entry["kind"] == "pair" and entry["sources"] == {"sentinel1_grd": 6, "sentinel2_l2a": 6}
    verify(out, deep=True)
    samples = _samples(out, entry)
    key = next(k for k in samples if "56_35" in k)
    sample = samples[key]
    meta = sample["json"]
    assert meta["kind"] == "pair" and meta["grid_source"] == "sentinel2_l2a" and meta["footprint"] == "56_35"
    assert meta["parts"]["sentinel2_l2a"]["time"] == "2017-12-21T11:25:01"
    assert meta["parts"]["sentinel1_grd"]["time"] == "2017-12-21T06:42:38"
    assert sample["sentinel2_l2a.image.npy"].shape == (4, 120, 120)
    assert sample["sentinel1_grd.image.npy"].shape == (3, 120, 120)
    # Both patches lie on the same 10 m grid, so the reprojected S1 equals S1 read directly.
    scene = DEMO / "sentinel1_grd_bigearthnet" / "S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35"
    with rasterio.open(scene / f"{scene.name}_VV.tif") as ds:
        vv_db = ds.read(1).astype(np.float64)
    expected = (np.clip(vv_db, -35.0, 10.0) + 35.0) / 45.0  # sentinel1_grd.yaml: dB clipped to [-35, 10]
    np.testing.assert_allclose(sample["sentinel1_grd.image.npy"][0], expected, atol=1e-5)


def test_capella_sar_and_worldview_rgb_are_reprojected_onto_one_grid(tmp_path):
    """Capella (2.5 m, a 506 m square) is the grid; the 4.5 m WorldView-2 RGB is resampled onto it."""
    out = tmp_path / "sar_optical"
    sar = InputSpec("capella_quadpol", str(DEMO / "spacenet6_capella_sar"), band_files="sar_{band_lower}.tif")
    rgb = InputSpec("worldview2_rgb", str(DEMO / "spacenet6_worldview2" / "rgb_unmasked.tif"))
    config = BuildConfig(
        pairs=[PairSpec("sar_rgb", inputs=[sar, rgb], footprint="")],
        out_dir=str(out),
        tile_size=100,
        min_valid_fraction=0.3,
    )
    manifest = build(config)
    assert manifest["streams"]["sar_rgb"]["samples"] == 4
    verify(out, deep=True)
    samples = _samples(out, manifest["shards"][0])
    sample = samples[sorted(samples)[0]]  # the tile at row 0, col 0
    rgb_image = sample["worldview2_rgb.image.npy"]
    assert sample["capella_quadpol.image.npy"].shape == (8, 100, 100) and rgb_image.shape == (3, 100, 100)
    assert sample["worldview2_rgb.valid.npy"].mean() > 0.9  # the RGB covers the whole SAR footprint
    # Check the warp against the source: the RGB pixel under the tile's centre, at WorldView-2 resolution.
    meta = sample["json"]
    left, bottom, right, top = meta["bounds"]
    with rasterio.open(DEMO / "spacenet6_worldview2" / "rgb_unmasked.tif") as ds:
        row, col = ds.index((left + right) / 2, (bottom + top) / 2)
        window = ds.read(window=((row - 1, row + 2), (col - 1, col + 2))).astype(np.float64) / 255.0
    centre = rgb_image[:, 49:51, 49:51].mean(axis=(1, 2))
    assert np.all(centre >= window.min(axis=(1, 2)) - 1e-6) and np.all(centre <= window.max(axis=(1, 2)) + 1e-6)
    assert meta["parts"]["worldview2_rgb"]["source_crs"] == meta["crs"] == "EPSG:32631"


def test_unmatched_scenes_are_counted(tmp_path):
    only_one_s1 = InputSpec(
        "sentinel1_grd", str(DEMO / "sentinel1_grd_bigearthnet" / "*56_35"), band_files="{scene}_{band}.tif"
    )
    config = BuildConfig(
        pairs=[PairSpec("s2_s1", inputs=[S2_INPUT, only_one_s1])], out_dir=str(tmp_path / "o"), tile_size=120
    )
    manifest = build(config)
    assert manifest["streams"]["s2_s1"]["groups"] == 1 and len(manifest["streams"]["s2_s1"]["unmatched"]) == 5


def test_eolearn_time_series_becomes_sequences(real_pack, tmp_path):
    dates = write_eolearn_dates(real_pack, tmp_path / "dates", shift_last=True)
    spec = InputSpec(
        "sentinel2_l1c", str(tmp_path / "dates" / "*.tif"), band_indexes={"B02": 1, "B03": 2, "B04": 3, "B08": 4}
    )
    seq = SequenceSpec("eopatch_l1c", input=spec, footprint=r"^(eopatch)_", min_steps=5, resampling="nearest")
    out = tmp_path / "seq"
    manifest = build(BuildConfig(sequences=[seq], out_dir=str(out), tile_size=48, min_valid_fraction=0.5))
    assert manifest["streams"]["eopatch_l1c"]["groups"] == 1 and manifest["samples"] == 4  # 2x2 tiles of 48 px
    verify(out, deep=True)
    samples = _samples(out, manifest["shards"][0])
    sample = samples[sorted(samples)[0]]
    image, valid, meta = sample["image.npy"], sample["valid.npy"], sample["json"]
    assert image.shape == (5, 4, 48, 48) and valid.shape == (5, 48, 48)
    assert [t[:19] for t in meta["timestamps"]] == dates and meta["kind"] == "sequence"
    assert len(meta["scenes"]) == 5 and len(meta["valid_fraction_per_step"]) == 5
    assert not np.array_equal(image[0], image[1])  # different dates, different reflectance
    # The earliest date (the grid) lies one pixel east of the others, so after resampling onto its grid, column
    # c of a later date holds that date's source column c + 1.
    first, second = sorted((tmp_path / "dates").glob("*.tif"))[:2]
    with rasterio.open(first) as ds:
        np.testing.assert_allclose(image[0][0], ds.read(1, window=((0, 48), (0, 48))) * 1e-4, rtol=1e-6)
    with rasterio.open(second) as ds:
        np.testing.assert_allclose(image[1][0], ds.read(1, window=((0, 48), (1, 49))) * 1e-4, rtol=1e-6)


def test_sequences_shorter_than_min_steps_are_counted(real_pack, tmp_path):
    write_eolearn_dates(real_pack, tmp_path / "dates")
    spec = InputSpec(
        "sentinel2_l1c", str(tmp_path / "dates" / "*.tif"), band_indexes={"B02": 1, "B03": 2, "B04": 3, "B08": 4}
    )
    seq = SequenceSpec("eo", input=spec, footprint=r"^(eopatch)_", min_steps=6)
    manifest = build(BuildConfig(sequences=[seq], out_dir=str(tmp_path / "o"), tile_size=48))
    assert manifest["samples"] == 0 and len(manifest["streams"]["eo"]["unmatched"]) == 5


@pytest.mark.parametrize("bad", ["footprint", "name"])
def test_pair_config_errors_name_the_key(bad, tmp_path):
    from data_pipeline.config import validate
    from ringmoe.core.errors import ConfigError

    pair = PairSpec("s2_s1", inputs=[S2_INPUT, S1_INPUT])
    if bad == "footprint":
        pair.footprint = "no_group"
    else:
        pair.name = "bad.name"
    with pytest.raises(ConfigError, match=rf"pairs\[0\]\.{bad}"):
        validate(BuildConfig(pairs=[pair], out_dir="x"))

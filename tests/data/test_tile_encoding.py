"""Shards in the source's dtype: the loader normalizes them to exactly the values a float32 build stores, for
single images, pairs (on-grid part source-encoded, resampled part float32) and zarr time cubes; they are a
fraction of the size; and a format 2 dataset (every tile float32) is still read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.build import build, build_from_file
from data_pipeline.config import BuildConfig, InputSpec, SequenceSpec
from data_pipeline.verify import verify
from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MODALITIES
from ringmoe.core.errors import ConfigError
from tests.data.helpers import DEMO_CONFIG, manifest, same_batches, take
from tests.data_pipeline.helpers import DEMO, read_samples, write_eolearn_cube

S2 = InputSpec("sentinel2_l2a", str(DEMO / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif")
S1 = InputSpec("sentinel1_grd", str(DEMO / "sentinel1_grd_bigearthnet" / "*"), band_files="{scene}_{band}.tif")


@pytest.fixture(scope="module")
def both_encodings(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encodings")
    for encoding in ("source", "float32"):
        build_from_file(
            DEMO_CONFIG, [f"out_dir={root / encoding}", "shard_max_samples=8", f"shard_encoding={encoding}"]
        )
    return {encoding: root / encoding for encoding in ("source", "float32")}


def loader_config(shards: Path, **overrides) -> DataConfig:
    return DataConfig(shards=str(shards), batch_size_per_modality=6, shuffle_buffer=8, **overrides)


def test_source_dtype_tiles_load_bitwise_equal_to_float32_tiles(both_encodings):
    source, float32 = both_encodings["source"], both_encodings["float32"]
    stored = {s["json"]["source"]: s for s in read_samples(source, stored=True) if s["json"]["kind"] == "single"}
    # The integer and complex sources keep their dtype; WorldView-2 MS ships float64 and stays normalized float32.
    assert {name: s["image.npy"].dtype.name for name, s in stored.items()} == {
        "capella_quadpol": "complex64", "landsat7_etm": "uint8", "sentinel1_grd": "float32",
        "sentinel2_l2a": "uint16", "worldview2": "float32", "worldview2_rgb": "uint8",
    }  # fmt: skip
    assert "encoding" not in stored["worldview2"]["json"] and stored["landsat7_etm"]["json"]["encoding"] == "source"
    assert same_batches(take(loader_config(source), 5), take(loader_config(float32), 5))
    for two_workers in (loader_config(source, num_workers=2), loader_config(float32, num_workers=2)):
        assert same_batches(take(two_workers, 3), take(loader_config(source), 3))
    sizes = {name: sum(e["bytes"] for e in manifest(root)["shards"]) for name, root in both_encodings.items()}
    assert sizes["source"] < 0.6 * sizes["float32"]
    landsat = {name: manifest(root)["streams"]["landsat7_etm"]["bytes"] for name, root in both_encodings.items()}
    assert landsat["source"] < 0.3 * landsat["float32"]  # uint8: a quarter of the pixels' bytes, plus headers
    verify(source, deep=True)


def test_pairs_decode_each_part_by_its_own_encoding(both_encodings):
    source, float32 = both_encodings["source"], both_encodings["float32"]
    pair = next(s for s in read_samples(source, stored=True) if s["json"]["kind"] == "pair")
    assert pair["json"]["parts"]["sentinel2_l2a"]["encoding"] == "source"  # the grid: read as stored
    assert "encoding" not in pair["json"]["parts"]["sentinel1_grd"]  # warped onto it: float64, kept normalized
    places = dict(modalities=["multispectral", "sar_amplitude"], places_per_batch=3, shuffle_buffer=4)
    first = take(DataConfig(shards=str(source), **places), 3)
    second = take(DataConfig(shards=str(float32), **places), 3)
    for a, b in zip(first, second):
        assert a.keys == b.keys
        assert all(np.array_equal(a.images[m].numpy(), b.images[m].numpy()) for m in a.images)


def test_a_zarr_time_cube_is_stored_in_its_dtype_and_loads_as_float32_would(real_pack, tmp_path):
    write_eolearn_cube(real_pack, tmp_path / "cube.zarr")
    spec = InputSpec("sentinel2_l1c", str(tmp_path / "cube.zarr"), array="bands", dims=["time", "y", "x", "band"])
    roots = {}
    for encoding in ("source", "float32"):
        roots[encoding] = tmp_path / encoding
        config = BuildConfig(
            sequences=[SequenceSpec("cube", input=spec)],
            out_dir=str(roots[encoding]),
            tile_size=48,
            min_valid_fraction=0.3,
            shard_encoding=encoding,
        )
        build(config)
    (stored,) = read_samples(roots["source"], stored=True)[:1]
    assert stored["image.npy"].dtype == np.uint16 and stored["image.npy"].shape[:2] == (5, 4)  # (T, B, H, W)
    decoded = [s["image.npy"] for s in read_samples(roots["source"])]
    plain = [s["image.npy"] for s in read_samples(roots["float32"])]
    assert len(decoded) == len(plain) and all(np.array_equal(a, b) for a, b in zip(decoded, plain))
    places = dict(modalities=["multispectral"], places_per_batch=2, max_dates={"multispectral": 5})
    first, second = (take(DataConfig(shards=str(roots[e]), **places), 2) for e in ("source", "float32"))
    assert all(np.array_equal(a.images["multispectral"], b.images["multispectral"]) for a, b in zip(first, second))


@pytest.mark.parametrize("version, encoding", [(2, "float32"), (3, "source")])
def test_datasets_of_older_formats_are_still_read(both_encodings, tmp_path, version, encoding):
    """Datasets written before xxh3 member digests (format 3: plain sha256 per member) and before source-dtype
    tiles (format 2, every tile float32): read to the same batches, their member sha256 checked."""
    old = tmp_path / "old"
    old.mkdir()
    data = manifest(both_encodings[encoding])
    data["format_version"] = version
    for entry in data["shards"]:
        shard = (both_encodings[encoding] / entry["path"]).read_bytes()
        (old / entry["path"]).write_bytes(shard)
        index = json.loads((both_encodings[encoding] / entry["index"]).read_text())
        index["format_version"] = version
        for sample in index["samples"]:
            for span in sample["members"].values():
                span[2] = hashlib.sha256(shard[span[0] : span[0] + span[1]]).hexdigest()
        raw = json.dumps(index).encode()
        (old / entry["index"]).write_bytes(raw)
        entry["index_sha256"] = hashlib.sha256(raw).hexdigest()
    if version == 2:
        del data["sensors"]  # format 2 manifests before user sensors: the built-in registry
    (old / "manifest.json").write_text(json.dumps(data))
    assert same_batches(take(loader_config(old), 4), take(loader_config(both_encodings["source"]), 4))
    assert set(take(loader_config(old), 1)[0].images) == set(MODALITIES)
    report = verify(old, deep=True)
    assert report["samples"] == data["samples"] and not report["problems"]


def test_an_unknown_encoding_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="shard_encoding.*'int8'"):
        build_from_file(DEMO_CONFIG, [f"out_dir={tmp_path}", "shard_encoding=int8"])

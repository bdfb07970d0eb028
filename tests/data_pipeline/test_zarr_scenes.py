"""zarr scenes: v2 and v3 stores, one date of a time cube as an image (``time_index``), the checks that name the
store, and resume noticing rewritten chunks; on the real eo-learn Sentinel-2 L1C reference scenes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, SequenceSpec
from data_pipeline.verify import verify
from ringmoe.core.errors import ConfigError, DataError
from tests.data_pipeline.helpers import (
    L1C_BANDS,
    eolearn_grid,
    eolearn_reference,
    read_samples,
    write_eolearn_cube,
)

CUBE_DIMS = ["time", "y", "x", "band"]
L1C_MODALITY = [L1C_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]


def _cube_input(store: Path, **kw) -> InputSpec:
    return InputSpec("sentinel2_l1c", str(store), array="bands", dims=CUBE_DIMS, invalid_mask="clouds", **kw)


def _image_store(real_pack: Path, path: Path, step: int = 3) -> Path:
    """One real L1C date as a single zarr array (band, y, x) of uint16 DN, georeferenced by its attributes."""
    scenes, _, _ = eolearn_reference(real_pack)
    array = zarr.create_array(str(path), shape=(13, 101, 100), dtype="uint16", chunks=(13, 50, 50))
    array[:] = np.round(scenes[step].transpose(2, 0, 1) * 10000).astype(np.uint16)
    crs, transform = eolearn_grid(real_pack)
    array.attrs.update(crs=crs, transform=transform, band_names=L1C_BANDS)
    return path


def test_v2_and_v3_stores_give_byte_identical_shards(real_pack, tmp_path):
    hashes = []
    for fmt in (2, 3):
        store = tmp_path / f"v{fmt}" / "eopatch.zarr"
        write_eolearn_cube(real_pack, store, zarr_format=fmt)
        assert (store / (".zgroup" if fmt == 2 else "zarr.json")).is_file()  # really the format asked for
        out = tmp_path / f"out{fmt}"
        sequences = [SequenceSpec("eopatch", input=_cube_input(store))]
        manifest = build(BuildConfig(sequences=sequences, out_dir=str(out), tile_size=50, strict=True))
        verify(out, deep=True)
        hashes.append([entry["sha256"] for entry in manifest["shards"]])
    assert hashes[0] == hashes[1] and hashes[0]


def test_time_index_reads_one_real_date_as_an_image(real_pack, tmp_path):
    store = tmp_path / "eopatch.zarr"
    stamps = write_eolearn_cube(real_pack, store)
    scenes, clouds, _ = eolearn_reference(real_pack)
    clear, cloudy = 3, 1  # 2015-08-30 has no cloud in CLM; 2015-07-31 is cloud-covered over the whole patch
    assert clouds[clear].sum() == 0 and clouds[cloudy].all()

    out = tmp_path / "clear"
    manifest = build(BuildConfig(inputs=[_cube_input(store, time_index=clear)], out_dir=str(out), tile_size=50))
    verify(out, deep=True)
    samples = read_samples(out)
    assert manifest["sources"]["sentinel2_l1c"]["samples"] == len(samples) == 4
    for sample in samples:
        row, col = sample["json"]["row"], sample["json"]["col"]
        dn = np.round(scenes[clear][row : row + 50, col : col + 50][..., L1C_MODALITY] * 10000)
        np.testing.assert_allclose(sample["image.npy"], dn.transpose(2, 0, 1) * 1e-4, atol=1e-6)
        assert sample["valid.npy"].all() and sample["json"]["time"] == stamps[clear]
    assert stamps[clear].startswith("2015-08-30")

    out = tmp_path / "cloudy"
    manifest = build(BuildConfig(inputs=[_cube_input(store, time_index=cloudy)], out_dir=str(out), tile_size=50))
    assert manifest["samples"] == 0 and manifest["skipped"] == {"low_valid_fraction": 4}  # the real clouds


def test_time_index_must_fit_the_cube_and_the_config(real_pack, tmp_path):
    store = tmp_path / "eopatch.zarr"
    write_eolearn_cube(real_pack, store)
    with pytest.raises(DataError, match=r"eopatch\.zarr \(array 'bands'\): time_index 5 is outside the 5 time steps"):
        build(BuildConfig(inputs=[_cube_input(store, time_index=5)], out_dir=str(tmp_path / "o"), strict=True))
    image = InputSpec("sentinel2_l1c", str(store), array="bands", time_index=0)
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.time_index.*needs a time axis"):
        build(BuildConfig(inputs=[image], out_dir=str(tmp_path / "o")))
    sequence = SequenceSpec("eopatch", input=_cube_input(store, time_index=0))
    with pytest.raises(ConfigError, match=r"sequences\[0\]\.input\.time_index': a sequence keeps every step"):
        build(BuildConfig(sequences=[sequence], out_dir=str(tmp_path / "o")))


def _damage(store: Path, what: str) -> None:
    array = zarr.open_array(str(store), mode="r+")
    if what == "crs":
        array.attrs["crs"] = "EPSG:0"
    elif what == "transform":
        array.attrs["transform"] = [10.0, 0.0, 465181.0, 0.0, -10.0]
    elif what == "degenerate":
        array.attrs["transform"] = [0.0, 0.0, 465181.0, 0.0, 0.0, 5080254.0]
    elif what == "band_names":
        array.attrs["band_names"] = [b for b in L1C_BANDS if b != "B08"] + ["B13"]
    elif what == "no_band_names":
        del array.attrs["band_names"]
    elif what == "quadpol_names":  # bands named like Capella's, but the data is real-valued
        array.attrs["band_names"] = ["HH", "HV", "VH", "VV"] + L1C_BANDS[4:]


@pytest.mark.parametrize(
    "what, source, reason",
    [
        ("crs", "sentinel2_l1c", r"attribute 'crs' 'EPSG:0' is not a CRS"),
        ("transform", "sentinel2_l1c", r"attribute 'transform' must list 6 affine terms"),
        ("degenerate", "sentinel2_l1c", r"attribute 'transform' .* is degenerate"),
        ("band_names", "sentinel2_l1c", r"band_names .* lack modality bands \['B08'\] of 'sentinel2_l1c'"),
        ("no_band_names", "sentinel2_l1c", r"expected 4 bands .* found 13 \(add a 'band_names' attribute"),
        ("quadpol_names", "capella_quadpol", r"dtype uint16, source 'capella_quadpol' needs complex data"),
    ],
)
def test_bad_store_is_named_strict_and_quarantined_otherwise(real_pack, tmp_path, what, source, reason):
    store = _image_store(real_pack, tmp_path / "scene.zarr")
    _damage(store, what)
    config = BuildConfig(inputs=[InputSpec(source, str(store))], out_dir=str(tmp_path / "out"), strict=True)
    with pytest.raises(DataError, match=rf"scene\.zarr: {reason}"):
        build(config)
    config.strict = False
    [item] = build(config)["quarantined"]
    assert item["file"] == str(store) and re.search(reason, item["reason"])


def test_missing_georeference_and_mismatched_mask_name_the_store(real_pack, tmp_path):
    store = tmp_path / "eopatch.zarr"
    write_eolearn_cube(real_pack, store)
    group = zarr.open_group(str(store), mode="r+")
    group.create_array("small_clouds", shape=(5, 50, 50), dtype="uint8")
    spec = _cube_input(store)
    spec.invalid_mask = "small_clouds"
    config = BuildConfig(sequences=[SequenceSpec("s", input=spec)], out_dir=str(tmp_path / "o"), strict=True)
    with pytest.raises(DataError, match=r"eopatch\.zarr: mask array 'small_clouds' has shape \(5, 50, 50\), expected"):
        build(config)
    del group.attrs["transform"]
    config.sequences[0].input.invalid_mask = "clouds"
    with pytest.raises(DataError, match=r"eopatch\.zarr \(array 'bands'\): attribute 'transform' missing"):
        build(config)
    config.sequences[0].input.scenes = str(tmp_path / "nowhere.zarr")
    with pytest.raises(DataError, match=r"matches nothing \(looked for .*nowhere\.zarr\)"):
        build(config)


def test_downsample_is_refused_for_zarr_and_complex_sources(real_pack, tmp_path):
    store = _image_store(real_pack, tmp_path / "scene.zarr")
    spec = InputSpec("sentinel2_l1c", str(store), downsample=2)
    with pytest.raises(ConfigError, match=r"downsample needs a GDAL raster; .*scene\.zarr is a zarr store"):
        build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "o")))
    capella = InputSpec("capella_quadpol", str(real_pack / "spacenet6_capella_sar"), band_files="sar_{band_lower}.tif")
    capella.downsample = 2
    with pytest.raises(ConfigError, match=r"'capella_quadpol': downsample averages pixels.*complex SAR phase"):
        build(BuildConfig(inputs=[capella], out_dir=str(tmp_path / "o")))


def test_resume_rebuilds_after_a_chunk_of_the_store_is_rewritten(real_pack, tmp_path):
    store = _image_store(real_pack, tmp_path / "scene.zarr")
    config = BuildConfig(inputs=[InputSpec("sentinel2_l1c", str(store))], out_dir=str(tmp_path / "out"), tile_size=50)
    first = build(config)
    tars = sorted((tmp_path / "out").glob("*.tar"))
    stamps = [p.stat().st_mtime_ns for p in tars]
    assert [e["sha256"] for e in build(config, resume=True)["shards"]] == [e["sha256"] for e in first["shards"]]
    assert [p.stat().st_mtime_ns for p in tars] == stamps  # unchanged input: shards reused, not rewritten

    before = {p: p.stat().st_mtime_ns for p in store.iterdir()}
    zarr.open_array(str(store), mode="r+")[:, :50, :50] = 1  # one chunk file changes; the store's top level not
    assert {p: p.stat().st_mtime_ns for p in store.iterdir()} == before
    resumed = build(config, resume=True)
    fresh = build(dataclasses.replace(config, out_dir=str(tmp_path / "fresh")))
    assert [e["sha256"] for e in resumed["shards"]] == [e["sha256"] for e in fresh["shards"]]
    assert resumed["shards"][0]["sha256"] != first["shards"][0]["sha256"]
    first_tile = read_samples(tmp_path / "out")[0]
    assert first_tile["json"]["row"] == first_tile["json"]["col"] == 0
    np.testing.assert_allclose(first_tile["image.npy"], 1e-4, atol=1e-9)


def test_timestamps_of_a_cube_must_be_iso(real_pack, tmp_path):
    store = tmp_path / "eopatch.zarr"
    write_eolearn_cube(real_pack, store)
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["timestamps"] = ["yesterday"] * 5
    sequences = [SequenceSpec("s", input=_cube_input(store))]
    with pytest.raises(DataError, match=r"eopatch\.zarr \(array 'bands'\): timestamp 'yesterday' is not ISO 8601"):
        build(BuildConfig(sequences=sequences, out_dir=str(tmp_path / "o"), strict=True))

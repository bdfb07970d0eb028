"""End to end over the demo rasters: shards, manifest, verification, atomic writes, resume."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import xxhash

import data_pipeline.samples as samples_module
from data_pipeline.build import build
from data_pipeline.cli import main
from data_pipeline.config import BuildConfig, InputSpec, canonical_hash, load_build_config
from data_pipeline.manifest import sha256_file
from data_pipeline.verify import VerifyError, verify
from ringmoe.core.batch import MODALITIES
from ringmoe.core.errors import DataError
from ringmoe.core.files import current_umask
from ringmoe.core.tiles import manifest_decoders, normalized_arrays
from tests.data_pipeline.helpers import DEMO, DEMO_CONFIG, REPO, SHARED_REAL, read_samples, write_geotiff

SHARD_KEYS = {"path", "index", "index_sha256", "sha256", "bytes", "samples", "kind", "stream", "modality", "sources"}


def _manifest(out_dir: Path) -> dict:
    return json.loads((out_dir / "manifest.json").read_text())


def test_demo_build_covers_every_modality(demo_build):
    manifest = _manifest(demo_build)
    assert manifest["format_version"] == 4 and manifest["tile_size"] == 64 and manifest["tile_stride"] == 56
    assert manifest["config_hash"] == canonical_hash(manifest["config"])
    assert set(manifest["modalities"]) == set(MODALITIES)
    assert all(n >= 8 for n in manifest["modalities"].values())
    assert manifest["sources"]["sentinel2_l2a"]["samples"] == 6 * 4  # 120x120 -> 2x2 tiles
    assert manifest["sources"]["capella_quadpol"]["samples"] == 9  # 200x200 -> 3x3 tiles
    landsat = manifest["sources"]["landsat7_etm"]
    assert landsat["samples"] + landsat["skipped"]["low_valid_fraction"] == 12 * 13  # the nodata collar
    assert manifest["skipped"]["low_valid_fraction"] == landsat["skipped"]["low_valid_fraction"]
    assert sum(e["samples"] for e in manifest["shards"]) == manifest["samples"]


def test_shards_follow_the_sample_schema(demo_build):
    manifest = _manifest(demo_build)
    for entry in manifest["shards"]:
        assert set(entry) == SHARD_KEYS
        path = demo_build / entry["path"]
        assert path.name.startswith(f"{entry['stream']}-00000-") and path.stat().st_size == entry["bytes"]
        assert sha256_file(path) == entry["sha256"]
        if entry["kind"] == "single":
            assert entry["sources"] == {entry["stream"]: entry["samples"]}
        else:  # the demo's S2/S1 pair stream: every sample holds both sensors
            assert entry["sources"] == {"sentinel1_grd": entry["samples"], "sentinel2_l2a": entry["samples"]}
        index = json.loads((demo_build / entry["index"]).read_text())
        assert (
            sha256_file(demo_build / entry["index"]) == entry["index_sha256"]
            and len(index["samples"]) == entry["samples"]
        )
        # The index's offsets are where tarfile finds each member's data, and the digest is xxh3-128 of those bytes.
        with tarfile.open(path) as tar:
            found = {m.name: (m.offset_data, m.size, tar.extractfile(m).read()) for m in tar}
        for sample in index["samples"]:
            for ext, (offset, size, digest) in sample["members"].items():
                got_offset, got_size, data = found[f"{sample['key']}.{ext}"]
                assert (offset, size) == (got_offset, got_size)
                assert digest == f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}"
    capella = next(e for e in manifest["shards"] if e["stream"] == "capella_quadpol")
    samples = list(wds.WebDataset(str(demo_build / capella["path"]), shardshuffle=False).decode())
    index = json.loads((demo_build / capella["index"]).read_text())["samples"]
    assert [s["__key__"] for s in samples] == [i["key"] for i in index]
    sample = samples[0]
    image, valid, meta = sample["image.npy"], sample["valid.npy"], sample["json"]
    # Stored in the source's dtype (complex64 HH, HV, VH, VV) with a bit-packed mask; normalized on reading.
    assert meta["encoding"] == "source" and image.dtype == np.complex64 and image.shape == (4, 64, 64)
    assert valid.dtype == np.uint8 and valid.shape == (64, 8)
    decoded = normalized_arrays(sample, meta, manifest_decoders(manifest))
    image, valid = decoded["image.npy"], decoded["valid.npy"]
    assert image.dtype == np.float32 and image.shape == (8, 64, 64) and np.isfinite(image).all()
    assert valid.dtype == np.uint8 and valid.shape == (64, 64)
    assert meta["crs"] == "EPSG:32631" and meta["channels"] == 8 and meta["bands"] == ["HH", "HV", "VH", "VV"]
    assert len(meta["bounds"]) == 4 and len(meta["transform"]) == 6 and meta["kind"] == "single"
    assert {"source", "modality", "platform", "scene", "row", "col", "channel_names"} <= set(meta)


def test_verify_passes_and_names_a_truncated_shard(demo_build, tmp_path):
    summary = verify(demo_build, deep=True)
    assert summary["samples"] == _manifest(demo_build)["samples"] and not summary["unlisted_shards"]
    copy = tmp_path / "copy"
    shutil.copytree(demo_build, copy)
    shard = copy / _manifest(copy)["shards"][-1]["path"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{shard.name}: \d+ bytes, manifest says"):
        verify(copy)


def test_verify_names_a_flipped_byte_and_a_missing_shard(demo_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_build, copy)
    first = copy / _manifest(copy)["shards"][0]["path"]
    data = bytearray(first.read_bytes())
    data[2000] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{first.name}: sha256 .* does not match"):
        verify(copy)
    with pytest.raises(VerifyError) as deep:  # deep goes past the checksum to the sample the byte belongs to
        verify(copy, deep=True)
    report = deep.value.report
    named = [p for p in report["problems"] if p["key"]]
    assert len(named) == 1 and "does not match its digest" in named[0]["reason"], report["problems"]
    assert report["quarantined_samples"] == 1 and report["quarantined_at_build"] == 0
    first.unlink()
    with pytest.raises(DataError, match=rf"{first.name}: shard listed in the manifest is missing"):
        verify(copy)


def test_verify_counts_samples_in_the_tar(demo_build, tmp_path):
    """A manifest whose hashes match but whose counts lie is caught by reading the tar."""
    copy = tmp_path / "copy"
    shutil.copytree(demo_build, copy)
    manifest = _manifest(copy)
    manifest["shards"][0]["samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"{manifest['shards'][0]['path']}: index lists \d+ samples, manifest lists"):
        verify(copy)


def test_rebuild_is_byte_identical_and_resume_reuses(demo_build, tmp_path):
    out_dir = tmp_path / "again"
    config = load_build_config(DEMO_CONFIG, [f"out_dir={out_dir}"])
    manifest = build(config, config_dir=DEMO_CONFIG.parent)
    before = _manifest(demo_build)
    assert [e["sha256"] for e in manifest["shards"]] == [e["sha256"] for e in before["shards"]]
    stamps = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.tar")}
    again = build(config, config_dir=DEMO_CONFIG.parent, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.tar")} == stamps  # nothing rewritten
    assert again["shards"] == manifest["shards"] and verify(out_dir)["samples"] == manifest["samples"]


def test_shards_roll_over_and_stale_shards_go(tmp_path):
    out_dir = tmp_path / "out"
    rgb = str(DEMO / "landsat7_etm" / "RGB.byte.tif")
    inputs = [InputSpec("landsat7_etm", rgb, band_indexes={"B3": 1, "B2": 2, "B1": 3})]
    config = BuildConfig(inputs=inputs, out_dir=str(out_dir), tile_size=64, shard_max_samples=10)
    manifest = build(config)
    assert [e["samples"] for e in manifest["shards"]][:-1] == [10] * (len(manifest["shards"]) - 1)
    config.shard_max_samples = 1000
    config.shard_max_bytes = 200_000
    manifest = build(config)
    assert all(e["bytes"] <= 200_000 for e in manifest["shards"])
    assert sorted(p.name for p in out_dir.glob("*.tar")) == sorted(e["path"] for e in manifest["shards"])
    verify(out_dir, deep=True)


def test_crash_leaves_no_tmp_and_no_manifest_and_resume_finishes_byte_identical(demo_build, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    config = load_build_config(DEMO_CONFIG, [f"out_dir={out_dir}", "shard_max_samples=5"])
    reference = build(config, config_dir=DEMO_CONFIG.parent)
    shutil.rmtree(out_dir)
    calls = {"n": 0}
    real_read = samples_module.read_window

    def failing_read(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 150:  # in the middle of a shard of landsat7_etm (the last source)
            raise OSError("disk on fire")
        return real_read(*args, **kwargs)

    monkeypatch.setattr(samples_module, "read_window", failing_read)
    with pytest.raises(OSError, match="disk on fire"):
        build(config, config_dir=DEMO_CONFIG.parent)
    assert not list(out_dir.glob("*.tmp")) and not list(out_dir.glob(".*.tmp"))
    assert not (out_dir / "manifest.json").exists()  # no manifest describing shards it did not write
    finished = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("landsat7_etm-*.tar")}
    assert 0 < len(finished) < sum(e["stream"] == "landsat7_etm" for e in reference["shards"])

    monkeypatch.setattr(samples_module, "read_window", real_read)
    resumed = build(config, config_dir=DEMO_CONFIG.parent, resume=True)
    assert resumed["shards"] == reference["shards"]  # same bytes, same sha256 as the uninterrupted build
    assert {n: (out_dir / n).stat().st_mtime_ns for n in finished} == finished  # finished shards kept
    assert resumed["skipped"] == reference["skipped"]
    verify(out_dir, deep=True)


def test_nan_raster_gives_skipped_tiles_and_no_nan(tmp_path):
    data = np.full((4, 128, 192), 900.0, dtype=np.float64)
    data[:, :, :100] = np.nan  # tiles 0 and 1 of each row are (mostly) NaN
    data[2, 70, 150] = np.inf  # one more pixel, in a kept tile
    write_geotiff(tmp_path / "nan_ms.tif", data)
    config = BuildConfig(inputs=[InputSpec("worldview2", "nan_ms.tif")], out_dir=str(tmp_path / "out"), tile_size=64)
    manifest = build(config, config_dir=tmp_path)
    assert manifest["skipped"] == {"low_valid_fraction": 4} and manifest["samples"] == 2
    assert manifest["nonfinite_pixels"] == 128 * 100 + 1  # every one counted, none written
    verify(tmp_path / "out", deep=True)  # deep: every image finite


def test_real_nan_masked_sar(real_pack, tmp_path):
    """sar_masked.tif (shared pack): dB intensity with NaN-masked areas, read as Sentinel-1-like VV/VH."""
    config = BuildConfig(
        inputs=[
            InputSpec(
                "sentinel1_grd",
                str(real_pack / "spacenet6_capella_sar" / "sar_masked.tif"),
                band_indexes={"VV": 4, "VH": 3},  # file bands: HH, HV, VH, VV (dB intensity)
            )
        ],
        out_dir=str(tmp_path / "out"),
        tile_size=64,
        tile_stride=32,
    )
    manifest = build(config)
    assert manifest["skipped"]["low_valid_fraction"] > 0 and manifest["samples"] > 0
    samples = read_samples(tmp_path / "out")
    images, masks = [s["image.npy"] for s in samples], [s["valid.npy"] for s in samples]
    assert all(np.isfinite(a).all() for a in images)
    assert any((m == 0).any() for m in masks)  # kept tiles still carry masked pixels
    assert all(((img[:, m == 0]) == 0).all() for img, m in zip(images, masks))


def test_cli_build_and_verify(tmp_path, capsys):
    out_dir = tmp_path / "cli"
    assert main(["build", "--config", str(DEMO_CONFIG), f"out_dir={out_dir}"]) == 0
    out = capsys.readouterr().out
    assert "capella_quadpol" in out and "skipped tiles: low_valid_fraction=" in out
    assert main(["verify", str(out_dir)]) == 0
    assert "ok" in capsys.readouterr().out
    assert not list(out_dir.glob("*.tmp"))


def test_no_machine_paths_in_committed_files():
    for path in [DEMO_CONFIG, DEMO / "MANIFEST.md", DEMO / "README.md"]:
        text = path.read_text()
        assert str(REPO.parent) not in text and str(Path.home()) not in text, path


@pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="shared real-sample pack not present beside the repo")
def test_demo_files_are_byte_identical_to_the_shared_pack():
    records = {r["path"]: r["sha256"] for r in json.loads((SHARED_REAL / "manifest.json").read_text())["files"]}
    # demo_data/eurosat_rgb comes from the labelled pack; tests/unit/test_demo_data.py checks it against its manifest.
    data_files = [
        p
        for p in DEMO.rglob("*")
        if p.is_file() and p.suffix in (".tif", ".json", ".npy", ".geojson") and "eurosat_rgb" not in p.parts
    ]
    assert len(data_files) == 60
    for path in data_files:
        assert sha256_file(path) == records[str(path.relative_to(DEMO))], path


def test_parallel_parts_give_the_same_dataset(demo_build, tmp_path):
    """Two worker processes over parts of 2 scenes: the same shards (by sha256) as one process."""
    overrides = ["scenes_per_part=2", "shard_max_samples=7"]
    serial = build(load_build_config(DEMO_CONFIG, [f"out_dir={tmp_path / 'one'}", *overrides]), DEMO_CONFIG.parent)
    parallel = build(
        load_build_config(DEMO_CONFIG, [f"out_dir={tmp_path / 'two'}", "workers=2", *overrides]), DEMO_CONFIG.parent
    )
    assert len({e["path"].split("-")[-2] for e in serial["shards"]}) == 3  # 6 S2 scenes -> parts 0, 1, 2
    shards = [(e["path"], e["sha256"]) for e in serial["shards"]]
    assert [(e["path"], e["sha256"]) for e in parallel["shards"]] == shards
    assert parallel["samples"] == _manifest(demo_build)["samples"]


def test_part_slices_then_resume_equal_the_serial_build(demo_shards, tmp_path):
    """What the SLURM ingest array does: each task builds its slice of parts, then one resume writes the
    manifest, reusing every shard; the result is byte-identical to a single build."""
    from data_pipeline.build import build_from_file
    from tests.data_pipeline.helpers import DEMO_CONFIG

    out = tmp_path / "sliced"
    built = [build_from_file(DEMO_CONFIG, [f"out_dir={out}"], part_slice=(i, 3))["parts"] for i in range(3)]
    assert not (out / "manifest.json").exists() and all(built)
    parts = sorted((p["stream"], p["part"]) for task in built for p in task)
    assert len(parts) == len(set(parts))  # each part built by exactly one task
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    manifest = build_from_file(DEMO_CONFIG, [f"out_dir={out}"], resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before  # reused, not rewritten
    serial = json.loads((demo_shards / "manifest.json").read_text())
    assert [(s["path"], s["sha256"]) for s in manifest["shards"]] == [
        (s["path"], s["sha256"]) for s in serial["shards"]
    ]


def test_scene_list_keeps_only_the_listed_scenes_and_names_a_missing_one(tmp_path):
    """A dataset's split file (``class/file`` lines) picks the pretraining scenes out of a glob over all classes."""
    rng = np.random.default_rng(0)
    for name in ("forest/f1", "forest/f2", "river/r1", "river/r2"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_geotiff(tmp_path / f"{name}.tif", rng.integers(1, 255, (3, 64, 64), dtype=np.uint8))
    (tmp_path / "train.txt").write_text("forest/f2.tif\nriver/r1.tif\n")
    spec = InputSpec("worldview2_rgb", "*/*.tif", scene_list="train.txt")
    config = BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=64)
    manifest = build(config, config_dir=tmp_path)
    assert manifest["samples"] == 2
    assert sorted(sample["json"]["scene"] for sample in read_samples(tmp_path / "out")) == ["f2", "r1"]
    (tmp_path / "train.txt").write_text("forest/f2.tif\nriver/r9.tif\n")
    with pytest.raises(DataError, match=r"1 scenes of scene_list .*train.txt are not matched .*river/r9.tif"):
        build(config, config_dir=tmp_path)


def test_manifest_and_indexes_are_readable_like_the_shards(demo_build):
    """Atomic writes go through mkstemp (0600); the files a build publishes get what the umask gives the shards."""
    umask = current_umask()
    published = [demo_build / "manifest.json", *demo_build.rglob("*.idx.json"), *demo_build.rglob("*.tar")]
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in published}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_an_all_nan_scene_is_named_and_fatal_when_strict(tmp_path):
    write_geotiff(tmp_path / "a_nan.tif", np.full((4, 128, 128), np.nan))
    write_geotiff(tmp_path / "b_good.tif", np.full((4, 128, 128), 900.0))
    config = BuildConfig(inputs=[InputSpec("worldview2", "*.tif")], out_dir=str(tmp_path / "out"), tile_size=64)
    manifest = build(config, config_dir=tmp_path)
    assert manifest["samples"] == 4 and manifest["skipped"] == {"low_valid_fraction": 4}
    assert [(Path(q["file"]).name, q["reason"]) for q in manifest["quarantined"]] == [
        ("a_nan.tif", f"no valid pixel: all {128 * 128} NaN/inf pixels or nodata, every tile skipped")
    ]
    strict = BuildConfig(
        inputs=config.inputs, out_dir=str(tmp_path / "strict"), tile_size=64, strict=True
    )  # fmt: skip
    with pytest.raises(DataError, match=r"a_nan\.tif: no valid pixel"):
        build(strict, config_dir=tmp_path)


@pytest.mark.parametrize("length", [1, 99, 100, 101, 140])
@pytest.mark.parametrize("size", [0, 12_345, 8**11])
def test_predicted_member_headers_are_what_tarfile_writes(length, size):
    """Shard roll-over predicts sizes from header_bytes' shortcut; it must equal tarfile's own encoding."""
    import tarfile

    from data_pipeline.shards import MEMBER_MODE, MEMBER_MTIME, header_bytes

    for name in ("k" * (length - 4) + ".npy", "é" * length):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, MEMBER_MTIME, MEMBER_MODE, "", ""
        assert header_bytes(name, size) == len(info.tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape"))

"""Bad input at load time: strict mode raises naming the shard and problem; otherwise the sample or shard is
quarantined, counted in the report, and the sequence goes on without it, the same with any worker count.

Every test damages a copy of the capella_quadpol source (9 samples in shards of 8 + 1) and reads the
sar_complex modality, which has only that source, for two epochs.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.shards import ShardWriter, npy_bytes
from ringmoe.config.schema import DataConfig
from ringmoe.core.dataset_format import IMAGE_EXT, read_shard_members
from ringmoe.core.errors import DataError
from ringmoe.data.loader import build_loader
from tests.data.helpers import DEMO_CONFIG, copy_dataset, flat_keys, index_samples, manifest, source_keys

SHARD = "capella_quadpol-00000-00000.tar"
BATCHES = 6  # of 3 samples: 18 positions, two epochs of the 9-sample source


def config(root: Path | str, **overrides) -> DataConfig:
    settings = {"modalities": ["sar_complex"], "batch_size_per_modality": 3, "shuffle_buffer": 4}
    return DataConfig(shards=str(root), **{**settings, **overrides})


@pytest.fixture
def dataset(small_shards: Path, tmp_path: Path) -> Path:
    return copy_dataset(small_shards, tmp_path / "ds")


@pytest.fixture
def float32_dataset(tmp_path: Path) -> Path:
    """The capella source built with normalized float32 tiles (every dataset before source-dtype shards)."""
    from data_pipeline.build import build_from_file

    out = tmp_path / "f32"
    build_from_file(DEMO_CONFIG, [f"out_dir={out}", "shard_max_samples=8", "shard_encoding=float32"])
    return out


def run(cfg: DataConfig) -> tuple[list[str], dict]:
    loader = build_loader(cfg)
    batches = list(itertools.islice(iter(loader), BATCHES))
    assert all(batch.images["sar_complex"].shape[0] == 3 for batch in batches)
    return flat_keys(batches, "sar_complex"), loader.report()


def check_quarantined(root: Path | str, bad_keys: set[str], problem: str, strict_match: str) -> dict:
    """Strict raises naming the shard; lenient never yields the bad keys, counts them, and is worker-independent."""
    with pytest.raises(DataError, match=strict_match):
        run(config(root, strict=True))
    keys, report = run(config(root))
    assert bad_keys and not bad_keys & set(keys)
    assert report["quarantined"] >= 1 and report["by_problem"] == {problem: report["quarantined"]}
    assert set(report["by_shard"]) == {SHARD}
    assert {r["key"] for r in report["recent"]} <= bad_keys | {f"#{i}" for i in range(8)}
    assert run(config(root, num_workers=2)) == (keys, report)
    return report


def test_truncated_shard(dataset: Path) -> None:
    samples = index_samples(dataset, SHARD)
    cut = samples[4]["members"][IMAGE_EXT][0] + 100  # inside sample 4's image
    shard = dataset / SHARD
    shard.write_bytes(shard.read_bytes()[:cut])
    bad = {s["key"] for s in samples[4:]}
    check_quarantined(dataset, bad, "truncated shard", rf"{SHARD}: sample .* truncated shard: the sample needs bytes")


def test_corrupt_member_byte_fails_its_checksum(dataset: Path) -> None:
    samples = index_samples(dataset, SHARD)
    offset, size, _ = samples[2]["members"][IMAGE_EXT]
    data = bytearray((dataset / SHARD).read_bytes())
    data[offset + size // 2] ^= 0xFF
    (dataset / SHARD).write_bytes(bytes(data))
    match = rf"{SHARD}: sample {samples[2]['key']} .*checksum mismatch: member 'image.npy'"
    check_quarantined(dataset, {samples[2]["key"]}, "checksum mismatch", match)


def test_quarantine_counts_resume_with_the_loader(dataset: Path) -> None:
    offset, _, _ = index_samples(dataset, SHARD)[6]["members"][IMAGE_EXT]
    data = bytearray((dataset / SHARD).read_bytes())
    data[offset] ^= 0xFF
    (dataset / SHARD).write_bytes(bytes(data))
    _, uninterrupted = run(config(dataset))
    before = build_loader(config(dataset))
    list(itertools.islice(iter(before), BATCHES // 2))
    after = build_loader(config(dataset, num_workers=2))
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    list(itertools.islice(iter(after), BATCHES - BATCHES // 2))
    report = after.report()
    assert report["by_problem"] == uninterrupted["by_problem"] == {"checksum mismatch": report["quarantined"]}
    assert report["by_shard"] == uninterrupted["by_shard"]


def rewrite_shard(root: Path, key: str, image: bytes) -> None:
    """Rewrite SHARD with ShardWriter, ``key``'s image replaced, and record the new shard in the manifest."""
    members = read_shard_members(root / SHARD)
    members[key][IMAGE_EXT] = image
    (root / SHARD).unlink()
    with ShardWriter(root, "capella_quadpol", 0, "single", "sar_complex", 100, 1 << 30) as writer:
        for name, parts in members.items():
            writer.write(name, parts, ["capella_quadpol"])
    data = manifest(root)
    data["shards"] = [writer.entries[0] if e["path"] == SHARD else e for e in data["shards"]]
    (root / "manifest.json").write_text(json.dumps(data))


def original_image(root: Path, key: str) -> np.ndarray:
    return np.load(io.BytesIO(read_shard_members(root / SHARD)[key][IMAGE_EXT]), allow_pickle=False)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_pixel(dataset: Path, value: float) -> None:
    key = index_samples(dataset, SHARD)[3]["key"]
    image = original_image(dataset, key)
    image[1, 10, 20] = value
    rewrite_shard(dataset, key, npy_bytes(image))
    check_quarantined(dataset, {key}, "non-finite pixels", rf"{SHARD}: sample {key} .*1 NaN/inf value")


def test_wrong_channel_count(dataset: Path) -> None:
    key = index_samples(dataset, SHARD)[5]["key"]
    rewrite_shard(dataset, key, npy_bytes(original_image(dataset, key)[:3]))  # 3 of the 4 stored complex bands
    check_quarantined(dataset, {key}, "bad image", r"complex64 \(3, 64, 64\), expected 4 bands")


def test_wrong_channel_count_of_a_float32_tile(float32_dataset: Path) -> None:
    key = index_samples(float32_dataset, SHARD)[5]["key"]
    rewrite_shard(float32_dataset, key, npy_bytes(original_image(float32_dataset, key)[:6]))
    check_quarantined(float32_dataset, {key}, "bad image", r"float32 \(6, 64, 64\), expected float32 \(8, 64, 64\)")


def test_pickled_npy_is_never_unpickled(dataset: Path) -> None:
    key = index_samples(dataset, SHARD)[1]["key"]
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"not": "an image"}], dtype=object), allow_pickle=True)
    rewrite_shard(dataset, key, buffer.getvalue())
    check_quarantined(dataset, {key}, "bad npy", "does not decode as .npy without pickle")


def test_missing_shard(dataset: Path) -> None:
    bad = {s["key"] for s in index_samples(dataset, SHARD)}
    (dataset / SHARD).unlink()
    report = check_quarantined(dataset, bad, "missing shard", rf"{SHARD} does not exist")
    assert {r["key"] for r in report["recent"]} <= bad


def test_index_not_matching_the_manifest(dataset: Path) -> None:
    index = dataset / f"{SHARD}.idx.json"
    bad = {s["key"] for s in index_samples(dataset, SHARD)}
    index.write_text(index.read_text().replace('"format_version":4', '"format_version": 4'))
    check_quarantined(dataset, bad, "bad index", "does not match its sha256 in the manifest")


@pytest.mark.parametrize("prefix", ["../", "/tmp/escape/"])
def test_unsafe_tar_member_is_refused_in_stream_mode(dataset: Path, prefix: str) -> None:
    """A tar member that would land outside the extraction directory spoils its shard when streamed."""
    members = read_shard_members(dataset / SHARD)
    victim = next(iter(members))
    with tarfile.open(dataset / SHARD, "w") as tar:
        for key, parts in members.items():
            for ext, data in sorted(parts.items()):
                info = tarfile.TarInfo(f"{prefix if key == victim else ''}{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    url = f"pipe:cat {dataset}/{{path}}"
    report = check_quarantined(url, set(members), "unreadable shard", rf"{SHARD}.*refusing tar member '{prefix}")
    assert "refusing tar member" in report["recent"][0]["detail"]
    assert not (dataset.parent / f"{victim}.image.npy").exists()


def test_source_without_a_readable_sample_fails(dataset: Path) -> None:
    for shard in ("capella_quadpol-00000-00000.tar", "capella_quadpol-00000-00001.tar"):
        (dataset / shard).unlink()
    with pytest.raises(DataError, match="source 'capella_quadpol' has no readable sample"):
        run(config(dataset))


def test_unsafe_manifest_path_is_refused(dataset: Path) -> None:
    data = manifest(dataset)
    entry = next(e for e in data["shards"] if e["path"] == SHARD)
    entry["path"] = f"../{SHARD}"
    (dataset / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"refusing path '\.\./{SHARD}'"):
        build_loader(config(dataset))


def test_good_samples_of_a_damaged_shard_still_arrive(dataset: Path) -> None:
    """Quarantine is per sample: the rest of the corrupted shard keeps being read."""
    samples = index_samples(dataset, SHARD)
    offset, size, _ = samples[0]["members"][IMAGE_EXT]
    data = bytearray((dataset / SHARD).read_bytes())
    data[offset] ^= 0xFF
    (dataset / SHARD).write_bytes(bytes(data))
    keys, _ = run(config(dataset))
    assert set(keys) == source_keys(dataset, "capella_quadpol") - {samples[0]["key"]}

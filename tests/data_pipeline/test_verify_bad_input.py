"""``verify`` on damaged datasets: every problem is found, named and counted; strict stops at the first."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.cli import main
from data_pipeline.manifest import sha256_file
from data_pipeline.shards import ShardWriter, json_bytes, npy_bytes
from data_pipeline.verify import VerifyError, verify
from ringmoe.core.errors import DataError


@pytest.fixture
def copy(demo_build: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(demo_build, target)
    return target


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _reseal(root: Path, position: int) -> None:
    """Make the manifest agree with the shard's current bytes (a shard damaged before it was hashed)."""
    manifest = _manifest(root)
    entry = manifest["shards"][position]
    path = root / entry["path"]
    entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    entry["index_sha256"] = sha256_file(root / entry["index"])
    (root / "manifest.json").write_text(json.dumps(manifest))


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]


def _rewrite_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_every_problem_is_reported_with_its_shard(copy):
    entries = _manifest(copy)["shards"]
    truncated, missing = copy / entries[0]["path"], copy / entries[1]["path"]
    truncated.write_bytes(truncated.read_bytes()[:5000])
    missing.unlink()
    with pytest.raises(VerifyError) as caught:
        verify(copy)
    report = caught.value.report
    assert report["quarantined_shards"] == 2 and len(report["problems"]) == 2
    assert f"{truncated.name}: 5000 bytes, manifest says" in str(caught.value)
    assert f"{missing.name}: shard listed in the manifest is missing" in str(caught.value)
    with pytest.raises(DataError, match=truncated.name) as first_only:
        verify(copy, strict=True)
    assert not isinstance(first_only.value, VerifyError)  # strict raised at the first problem


def test_corrupt_member_is_caught_by_its_checksum(copy):
    """A byte flipped inside a member's data before the shard was hashed: only the member digest knows."""
    entry = _manifest(copy)["shards"][0]
    path = copy / entry["path"]
    index = json.loads((copy / entry["index"]).read_text())["samples"]
    offset = index[1]["members"]["image.npy"][0] + 500
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    _reseal(copy, 0)
    verify(copy)  # shallow: sizes, sha256 and offsets all agree
    with pytest.raises(VerifyError, match=rf"{index[1]['key']}'?: member 'image.npy' does not match its digest"):
        verify(copy, deep=True)


def test_nan_pixels_in_a_shard_are_found(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    image = np.zeros((3, 8, 8), dtype=np.float32)
    image[0, 2, 2] = np.nan
    meta = {"kind": "single", "source": "landsat7_etm"}
    with ShardWriter(root, "landsat7_etm", 0, "single", "optical", 10, 2**20) as writer:
        members = {
            "image.npy": npy_bytes(image),
            "valid.npy": npy_bytes(np.ones((8, 8), np.uint8)),
            "json": json_bytes(meta),
        }
        writer.write("landsat7_etm-s-r00000-c00000", members, ["landsat7_etm"])
    manifest = {"format_version": 2, "streams": {"landsat7_etm": {"channels": 3}}, "shards": writer.entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match=r"image has non-finite \(NaN/inf\) pixels"):
        verify(root, deep=True)


@pytest.mark.parametrize("name", ["../escape.json", "/etc/evil.json", "dir/nested.json"])
def test_unsafe_member_names_are_refused(copy, name):
    entry = _manifest(copy)["shards"][0]
    path = copy / entry["path"]
    members = _members(path)
    evil = tarfile.TarInfo(name)
    _rewrite_tar(path, members + [(evil, b"{}")])
    _reseal(copy, 0)
    with pytest.raises(VerifyError, match=rf"refusing tar member '{name}'"):
        verify(copy)


def test_index_that_lies_about_offsets_is_caught(copy):
    entry = _manifest(copy)["shards"][0]
    index_path = copy / entry["index"]
    index = json.loads(index_path.read_text())
    index["samples"][0]["members"]["json"][0] += 512
    index_path.write_text(json.dumps(index))
    with pytest.raises(VerifyError, match="does not match the manifest's sha256"):
        verify(copy)
    _reseal(copy, 0)
    with pytest.raises(VerifyError, match="member offsets or sizes differ from the index"):
        verify(copy)


def test_cli_verify_exits_1_and_writes_the_report(copy, tmp_path, capsys):
    entry = _manifest(copy)["shards"][0]
    (copy / entry["path"]).unlink()
    report = tmp_path / "report.json"
    assert main(["verify", str(copy), "--report", str(report)]) == 1
    out, err = capsys.readouterr()
    assert "quarantined: 1 shard(s)" in out and "missing" in err
    assert json.loads(report.read_text())["problems"][0]["shard"].endswith(entry["path"])

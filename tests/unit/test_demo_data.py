"""The in-repo demo data is what its manifests say: every file byte-identical to its recorded sha256, nothing
unlisted, and the EuroSAT subset a stratified fixed split the evaluation harness reads as such."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

DEMO_DATA = Path(__file__).resolve().parents[2] / "demo_data"
EUROSAT = DEMO_DATA / "eurosat_rgb"
CLASSES = 10
PER_CLASS = 20  # of each of train and test


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_md_rows() -> list[tuple[str, int, str]]:
    """(path, bytes, sha256) of the files table of demo_data/MANIFEST.md."""
    row = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$")
    matches = (row.match(line) for line in (DEMO_DATA / "MANIFEST.md").read_text().splitlines())
    return [(m[1], int(m[2]), m[3]) for m in matches if m]


def test_real_pack_files_match_manifest_md() -> None:
    rows = _manifest_md_rows()
    assert len(rows) == 60
    for path, size, sha in rows:
        file = DEMO_DATA / path
        assert file.stat().st_size == size and _sha256(file) == sha, path


def test_eurosat_subset_files_match_their_sha256() -> None:
    manifest = json.loads((EUROSAT / "manifest.json").read_text())
    records = manifest["files"]
    assert manifest["n_files"] == len(records) == 2 * PER_CLASS * CLASSES
    assert manifest["total_bytes"] == sum(r["bytes"] for r in records)
    for record in records:
        file = EUROSAT / record["file"]
        assert file.stat().st_size == record["bytes"] and _sha256(file) == record["sha256"], record["file"]
    on_disk = {str(p.relative_to(EUROSAT)) for p in EUROSAT.glob("*/*.jpg")}
    assert on_disk == {r["file"] for r in records}, "files on disk and in eurosat_rgb/manifest.json differ"


def test_eurosat_split_files_are_stratified_and_disjoint() -> None:
    records = {r["file"]: r for r in json.loads((EUROSAT / "manifest.json").read_text())["files"]}
    splits = {s: (EUROSAT / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert splits["val"] == []
    assert not set(splits["train"]) & set(splits["test"])
    for split in ("train", "test"):
        assert all(records[key]["split"] == split for key in splits[split])
        counts = Counter(key.split("/")[0] for key in splits[split])
        assert len(counts) == CLASSES and set(counts.values()) == {PER_CLASS}, (split, counts)


def test_eurosat_subset_loads_as_a_fixed_split() -> None:
    from ringmoe.eval.datasets.common import SPLITS
    from ringmoe.eval.datasets.folders import load_class_folders

    data = load_class_folders(EUROSAT, sensor="worldview2_rgb")
    assert len(data.class_names) == CLASSES and data.images.shape[-2:] == (64, 64)
    counts = Counter(SPLITS[int(s)] for s in data.split)
    assert counts == {"train": PER_CLASS * CLASSES, "test": PER_CLASS * CLASSES}
    assert data.labels.bincount().tolist() == [2 * PER_CLASS] * CLASSES


@pytest.mark.parametrize("name", ["eurosat_LICENSE_MIT.txt", "ATTRIBUTION_eurosat.txt"])
def test_eurosat_licence_is_in_the_repo(name: str) -> None:
    assert "Patrick Helber" in (DEMO_DATA / "licenses" / name).read_text()

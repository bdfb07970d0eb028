"""The on-disk dataset format, shared by the offline writer (``data_pipeline``) and the streaming loader.

A dataset is a directory (or URL) holding ``manifest.json`` and webdataset tar shards, each with an index.

**Samples.** Every sample is a group of tar members under one key (``<key>.<ext>``; keys hold no dots):

- ``kind="single"``: ``image.npy`` float32 (C, H, W) normalized model input in the modality group's channel
  order; ``valid.npy`` uint8 (H, W), 1 where every band held valid data (nodata, NaN, clouds are 0);
  ``json`` metadata: source, modality, scene, crs, bounds, transform, row/col, band and channel names.
  A tile whose JSON says ``"encoding": "source"`` holds the raw bands (B, H, W) in the file's dtype and a
  bit-packed mask instead; the reader normalizes it (``ringmoe.core.tiles``). Format 3 writes these; format 2
  datasets (all float32) are still read.
- ``kind="pair"`` (co-registered sensors, one footprint on one grid): ``<source>.image.npy`` and
  ``<source>.valid.npy`` for each source, and ``json`` with a ``parts`` entry per source.
- ``kind="sequence"`` (multi-date, one footprint): ``image.npy`` float32 (T, C, H, W) (source-encoded:
  (T, B, H, W)), ``valid.npy`` uint8 (T, H, W), ``json`` with ``timestamps`` (ISO 8601, one per step, ascending).

Only ``.npy`` (loaded with ``allow_pickle=False``) and ``.json`` members exist; nothing is ever unpickled.

**Shard index** (``<shard>.idx.json`` beside each shard): ``{"format_version", "shard", "samples": [{"key",
"members": {ext: [data_offset, size, digest]}}]}`` in tar order. Offsets let a loader read one sample with one
ranged read (local file or fsspec) and check each member's digest (``ringmoe.core.digests``: xxh3-128, or the
plain sha256 of format <= 3) without hashing the whole shard.

**Manifest** (``manifest.json``): ``format_version``, ``config`` and ``config_hash`` of the build, totals, per
source sections, ``skipped`` and ``quarantined`` reports, and ``shards``: one entry per shard with ``path``,
``index``, ``index_sha256``, ``sha256``, ``bytes``, ``samples``, ``kind``, ``stream`` (source or pair/sequence
name), ``modality`` (single only), ``sources`` ({source: samples}). Paths are relative to the dataset root.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from ringmoe.core.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 4  # 4: members carry "<algorithm>:<hex>" digests (ringmoe.core.digests)
# 3: tiles may be source-encoded (ringmoe.core.tiles), member sha256; 2: every tile float32. Both still read.
READABLE_FORMAT_VERSIONS = (2, 3, 4)
INDEX_SUFFIX = ".idx.json"
IMAGE_EXT = "image.npy"
VALID_EXT = "valid.npy"
META_EXT = "json"
SAMPLE_EXTS = (IMAGE_EXT, VALID_EXT, META_EXT)
KINDS = ("single", "pair", "sequence")


def sample_key(stream: str, scene: str, row: int, col: int) -> str:
    """Webdataset keys must not contain dots: they split the key from the member extension."""
    return f"{stream}-{scene}-r{row:05d}-c{col:05d}".replace(".", "_")


def index_name(shard: str) -> str:
    return shard + INDEX_SUFFIX


def expected_members(kind: str, sources: list[str]) -> list[str]:
    """The member extensions a sample of ``kind`` must have (sorted)."""
    if kind == "pair":
        return sorted([META_EXT] + [f"{s}.{ext}" for s in sources for ext in (IMAGE_EXT, VALID_EXT)])
    return sorted(SAMPLE_EXTS)


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read and check a local dataset's manifest; every problem names the manifest file."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; build the dataset with `ringmoe-data build` first")
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{where}: manifest has no 'shards' list")
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise DataError(
            f"{where}: format_version {version!r}, this reader understands {READABLE_FORMAT_VERSIONS} "
            "(rebuild the dataset with this version of `ringmoe-data build`)"
        )
    return manifest


def parse_index(data: bytes, where: str) -> list[dict[str, Any]]:
    """The ``samples`` list of a shard index, checked for shape."""
    try:
        index = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: shard index is not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise DataError(f"{where}: not a shard index of format {READABLE_FORMAT_VERSIONS}")
    samples = index.get("samples")
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "members" in s for s in samples):
        raise DataError(f"{where}: shard index has no valid 'samples' list")
    return samples


def check_member_name(name: str, where: str) -> None:
    """Refuse tar member names that could escape a directory or are not ``key.ext`` (tar-slip)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or len(path.parts) != 1 or "." not in name:
        raise DataError(f"{where}: refusing tar member {name!r} (absolute, '..' or nested path, or no extension)")


def read_shard_members(path: Path | str, with_data: bool = True, fileobj=None) -> dict[str, dict[str, bytes]]:
    """Group a shard's tar members by sample key, in tar order: ``{key: {ext: bytes}}``.

    With ``with_data=False`` only the member names are read (values are ``b""``). A corrupt or truncated tar,
    a non-file member or an unsafe member name raises ``DataError`` naming the shard. ``fileobj``: read from an
    open stream (e.g. a ``pipe:`` URL) instead of ``path``.
    """
    members: dict[str, dict[str, bytes]] = {}
    try:
        mode = "r|" if fileobj is not None else "r:"
        with tarfile.open(path if fileobj is None else None, mode=mode, fileobj=fileobj) as tar:
            for info in tar:
                check_member_name(info.name, str(path))
                if not info.isfile():
                    raise DataError(f"{path}: tar member {info.name!r} is not a regular file")
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info).read() if with_data or fileobj is not None else b""  # type: ignore[union-attr]
                if with_data and len(data) != info.size:
                    raise DataError(f"{path}: member {info.name!r} is truncated")
                members.setdefault(key, {})[ext] = data if with_data else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated shard ({exc})") from None
    return members

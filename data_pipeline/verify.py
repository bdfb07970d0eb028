"""Check a built dataset against its manifest: every shard present, same size and sha256, same samples.

``deep`` also decodes every sample and checks the image is finite float32 ``(C, H, W)`` with the source's
channel count and the valid mask is uint8 ``(H, W)``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.manifest import manifest_path, read_manifest, sha256_file
from ringmoe.core.errors import DataError
from ringmoe.core.schema import IMAGE_EXT, META_EXT, SAMPLE_EXTS, VALID_EXT, read_shard_members

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r".+-\d{6}\.tar")


def verify(out_dir: str | Path, deep: bool = False) -> dict[str, Any]:
    """Raise ``DataError`` naming the first bad shard; return counts of what was checked."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    samples: Counter[str] = Counter()
    total_bytes = 0
    listed = set()
    for entry in manifest["shards"]:
        path = out_dir / entry["path"]
        listed.add(path.name)
        _check_file(path, entry)
        keys = _read_keys(path, entry, deep, manifest)
        expected = [item["key"] for item in entry.get("items", [])]
        if len(keys) != entry["samples"] or (expected and keys != expected):
            raise DataError(
                f"{path}: holds {len(keys)} samples, manifest lists {entry['samples']}"
                + ("" if keys == expected or not expected else " (sample keys differ from the manifest)")
            )
        samples[entry["source"]] += entry["samples"]
        total_bytes += entry["bytes"]
    unlisted = sorted(p.name for p in out_dir.iterdir() if _SHARD_NAME.fullmatch(p.name) and p.name not in listed)
    if unlisted:
        log.warning("%s: shards not in the manifest (ignored by loaders): %s", out_dir, unlisted)
    return {
        "manifest": str(manifest_path(out_dir)),
        "shards": len(manifest["shards"]),
        "samples": sum(samples.values()),
        "bytes": total_bytes,
        "sources": dict(samples),
        "unlisted_shards": unlisted,
    }


def _check_file(path: Path, entry: dict[str, Any]) -> None:
    if not path.is_file():
        raise DataError(f"{path}: shard listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(f"{path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced shard)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise DataError(f"{path}: sha256 {digest} does not match the manifest ({entry['sha256']})")


def _read_keys(path: Path, entry: dict[str, Any], deep: bool, manifest: dict[str, Any]) -> list[str]:
    """Sample keys in tar order; every sample must have exactly the schema's members."""
    members = read_shard_members(path, with_data=deep)
    for key, parts in members.items():
        if sorted(parts) != sorted(SAMPLE_EXTS):
            raise DataError(f"{path}: sample {key!r} has members {sorted(parts)}, expected {sorted(SAMPLE_EXTS)}")
        if deep:
            channels = manifest.get("sources", {}).get(entry["source"], {}).get("channels")
            _check_sample(path, key, parts, entry["source"], channels)
    return list(members)


def _check_sample(path: Path, key: str, parts: dict[str, bytes], source: str, channels: int | None) -> None:
    try:
        image = np.load(io.BytesIO(parts[IMAGE_EXT]), allow_pickle=False)
        valid = np.load(io.BytesIO(parts[VALID_EXT]), allow_pickle=False)
        meta = json.loads(parts[META_EXT])
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: sample {key!r} does not decode ({exc})") from None
    if image.dtype != np.float32 or image.ndim != 3 or (channels is not None and image.shape[0] != channels):
        want = f"float32 ({channels if channels is not None else 'C'}, H, W)"
        raise DataError(f"{path}: sample {key!r} image is {image.dtype} {image.shape}, expected {want}")
    if valid.dtype != np.uint8 or valid.shape != image.shape[1:]:
        want = f"uint8 {image.shape[1:]}"
        raise DataError(f"{path}: sample {key!r} valid mask is {valid.dtype} {valid.shape}, expected {want}")
    if not np.isfinite(image).all():
        raise DataError(f"{path}: sample {key!r} has non-finite pixels")
    if meta.get("source") != source:
        raise DataError(f"{path}: sample {key!r} metadata names source {meta.get('source')!r}, shard is {source!r}")

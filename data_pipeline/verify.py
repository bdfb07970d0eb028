"""Check a built dataset against its manifest and report every problem, not just the first.

Per shard: present, same size and sha256 as the manifest, index present with the recorded sha256, tar members
safe (no absolute or ``..`` names), exactly the samples and members the index lists at the offsets it gives.
``deep`` also decodes every sample (``allow_pickle=False``) and checks member digests, dtype, shape, channel
count and finite pixels, and goes on past a shard checksum mismatch to name the damaged samples. A bad shard or
sample is recorded as quarantined; ``strict`` raises at the first one.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from data_pipeline.manifest import manifest_path, read_manifest, sha256_file
from ringmoe.core.dataset_format import IMAGE_EXT, META_EXT, VALID_EXT, check_member_name, expected_members, parse_index
from ringmoe.core.digests import digest_like
from ringmoe.core.errors import DataError
from ringmoe.core.tiles import TileDecoder, manifest_decoders, normalized_arrays

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r".+-\d{5}-\d{5}\.tar")


class VerifyError(DataError):
    """A dataset failed verification; ``report`` holds every problem found."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def verify(
    out_dir: str | Path, deep: bool = False, strict: bool = False, on_shard: Optional[Callable[[], None]] = None
) -> dict[str, Any]:
    """Check every shard; return a report, or raise ``VerifyError`` (carrying it) if anything is wrong."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    problems: list[dict[str, str]] = []

    def problem(shard: Path, reason: str, key: str = "") -> None:
        message = f"{shard}: " + (f"sample {key!r}: " if key else "") + reason
        if strict:
            raise DataError(message)
        log.warning("quarantined: %s", message)
        problems.append({"shard": str(shard), "key": key, "reason": reason})

    samples: Counter[str] = Counter()
    bad_shards = set()
    total_bytes = 0
    listed = set()
    decoders = manifest_decoders(manifest, str(manifest_path(out_dir))) if deep else {}
    for entry in manifest["shards"]:
        path = out_dir / entry["path"]
        listed.add(path.name)
        before = len(problems)
        _check_shard(path, out_dir / entry["index"], entry, manifest, decoders, deep, problem)
        if len(problems) > before:
            bad_shards.add(path.name)
        samples[entry["stream"]] += entry["samples"]
        total_bytes += entry["bytes"]
        if on_shard is not None:
            on_shard()
    unlisted = sorted(p.name for p in out_dir.iterdir() if _SHARD_NAME.fullmatch(p.name) and p.name not in listed)
    if unlisted:
        log.warning("%s: shards not in the manifest (ignored by loaders): %s", out_dir, unlisted)
    report = {
        "manifest": str(manifest_path(out_dir)),
        "shards": len(manifest["shards"]),
        "samples": sum(samples.values()),
        "bytes": total_bytes,
        "sources": dict(samples),
        "unlisted_shards": unlisted,
        "quarantined_shards": len(bad_shards),
        "quarantined_samples": sum(1 for p in problems if p["key"]),
        "quarantined_at_build": len(manifest.get("quarantined", [])),  # inputs the build left out
        "problems": problems,
    }
    if problems:
        shown = "\n  ".join(
            f"{p['shard']}: " + (f"sample {p['key']!r}: " if p["key"] else "") + p["reason"] for p in problems[:20]
        )
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerifyError(
            f"{out_dir}: {len(problems)} problem(s) in {len(bad_shards)} shard(s):\n  {shown}{more}", report
        )
    return report


def _check_shard(
    path: Path, index_path: Path, entry: dict, manifest: dict, decoders: dict[str, TileDecoder], deep: bool, problem
) -> None:
    if not path.is_file():
        return problem(path, "shard listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        return problem(path, f"{size} bytes, manifest says {entry['bytes']} (truncated or replaced shard)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        problem(path, f"sha256 {digest} does not match the manifest ({entry['sha256']})")
        if not deep:
            return None
        # Deep goes on through the index to name the damaged samples (each member has its own digest).
    if not index_path.is_file():
        return problem(path, f"index {index_path.name} is missing")
    if sha256_file(index_path) != entry["index_sha256"]:
        return problem(path, f"index {index_path.name} does not match the manifest's sha256")
    try:
        index = parse_index(index_path.read_bytes(), str(index_path))
    except DataError as exc:
        return problem(path, str(exc))
    if len(index) != entry["samples"]:
        return problem(path, f"index lists {len(index)} samples, manifest lists {entry['samples']}")
    try:
        found = _tar_members(path, deep)
    except DataError as exc:
        return problem(path, str(exc))
    sources = sorted(entry.get("sources", {}))
    want_exts = expected_members(entry["kind"], sources)
    if [s["key"] for s in index] != list(found):
        return problem(path, f"tar holds samples {list(found)[:3]}..., index lists {[s['key'] for s in index][:3]}...")
    channels = _channels(manifest, entry)
    for sample in index:
        key, members = sample["key"], sample["members"]
        if sorted(members) != want_exts:
            problem(path, f"has members {sorted(members)}, expected {want_exts}", key)
            continue
        tar_members = found[key]
        if any(tar_members.get(ext, (None, None))[:2] != tuple(spec[:2]) for ext, spec in members.items()):
            problem(path, "member offsets or sizes differ from the index", key)
            continue
        if deep:
            data = {ext: m[2] for ext, m in tar_members.items()}
            reason = _check_sample(entry, members, data, channels, decoders)
            if reason:
                problem(path, reason, key)


def _channels(manifest: dict, entry: dict) -> Any:
    return manifest.get("streams", {}).get(entry["stream"], {}).get("channels")


def _tar_members(path: Path, with_data: bool) -> dict[str, dict[str, tuple[int, int, bytes]]]:
    """``{key: {ext: (data_offset, size, bytes)}}`` in tar order; unsafe names and non-files are errors."""
    found: dict[str, dict[str, tuple[int, int, bytes]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                check_member_name(info.name, str(path))
                if not info.isfile():
                    raise DataError(f"{path}: tar member {info.name!r} is not a regular file")
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info).read() if with_data else b""  # type: ignore[union-attr]
                found.setdefault(key, {})[ext] = (info.offset_data, info.size, data)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"corrupt or truncated shard ({exc})") from None
    return found


def _check_sample(
    entry: dict, members: dict, data: dict[str, bytes], channels: Any, decoders: dict[str, TileDecoder]
) -> str:
    """Why a sample is bad, or "" if it is fine."""
    for ext, (_, _, digest) in members.items():
        try:
            if digest_like(data[ext], digest) != digest:
                return f"member {ext!r} does not match its digest (corrupt member)"
        except ValueError as exc:
            return f"member {ext!r}: {exc}"
    try:
        meta = json.loads(data[META_EXT])
        arrays = {
            ext: np.load(io.BytesIO(raw), allow_pickle=False) for ext, raw in data.items() if ext.endswith(".npy")
        }
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        return f"does not decode ({exc})"
    kind = entry["kind"]
    if meta.get("kind") != kind:
        return f"metadata kind {meta.get('kind')!r}, shard kind {kind!r}"
    try:
        arrays = normalized_arrays(arrays, meta, decoders)
    except (ValueError, KeyError) as exc:
        return f"does not decode ({exc})"
    if kind == "pair":
        decoded = {
            s: (arrays[f"{s}.{IMAGE_EXT}"], arrays[f"{s}.{VALID_EXT}"], channels.get(s)) for s in entry["sources"]
        }
    else:
        decoded = {"": (arrays[IMAGE_EXT], arrays[VALID_EXT], channels)}
    for name, (image, valid, want) in decoded.items():
        lead = 1 if kind == "sequence" else 0
        label = f"{name} image" if name else "image"
        if image.dtype != np.float32 or image.ndim != 3 + lead or (want is not None and image.shape[lead] != want):
            return f"{label} is {image.dtype} {image.shape}, expected float32 with {want} channels"
        mask_shape = image.shape[:lead] + image.shape[lead + 1 :]
        if valid.dtype != np.uint8 or valid.shape != mask_shape:
            return f"{label} valid mask is {valid.dtype} {valid.shape}, expected uint8 {mask_shape}"
        if not np.isfinite(image).all():
            return f"{label} has non-finite (NaN/inf) pixels"
    if kind == "single" and meta.get("source") != entry["stream"]:
        return f"metadata names source {meta.get('source')!r}, shard is {entry['stream']!r}"
    if kind == "sequence" and len(meta.get("timestamps", [])) != arrays[IMAGE_EXT].shape[0]:
        return f"{len(meta.get('timestamps', []))} timestamps for {arrays[IMAGE_EXT].shape[0]} steps"
    return ""

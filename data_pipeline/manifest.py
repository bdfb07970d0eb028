"""Read and atomically write the dataset manifest; hash files.

Manifest keys (``format_version`` 1): ``format_version``, ``pipeline_version``, ``config``, ``config_hash``,
``tile_size``, ``tile_stride``, ``min_valid_fraction``, ``samples``, ``modalities`` (samples per modality),
``sources`` (per source: modality, channels, channel_names, bands, scenes, scenes_without_tiles, samples,
skipped, shards, bytes, fingerprint), ``skipped`` (tiles per reason, all sources), and ``shards``: a list of
``{path, source, modality, samples, bytes, sha256, items: [{key, source, modality, crs, bounds}]}`` with
``path`` relative to the dataset directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ringmoe.core.errors import DataError
from ringmoe.core.schema import MANIFEST_FORMAT_VERSION, MANIFEST_NAME


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to ``<path>.tmp``, fsync, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = manifest_path(out_dir)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{path}: manifest has no 'shards' list")
    version = manifest.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version!r}, this reader understands {MANIFEST_FORMAT_VERSION}")
    return manifest

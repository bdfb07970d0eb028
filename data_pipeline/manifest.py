"""Read and atomically write the dataset manifest; hash files.

The manifest and shard index formats are specified in ``ringmoe.core.dataset_format`` (shared with the loader). Build
specific sections: ``streams`` (per stream: kind, modality, sources, groups, unmatched scenes, samples,
skipped, quarantined, shards, bytes, channels), ``sources`` (the single-source streams), ``skipped`` (tiles per
reason) and ``quarantined`` (``{stream, file, reason}`` per scene or tile that could not be read).
"""

from __future__ import annotations

from pathlib import Path

from ringmoe.core.dataset_format import MANIFEST_NAME, read_manifest
from ringmoe.core.files import atomic_write_json as write_json_atomic
from ringmoe.core.files import sha256_file

__all__ = ["manifest_path", "read_manifest", "sha256_file", "write_json_atomic"]


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME

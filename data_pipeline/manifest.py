"""Read and atomically write the dataset manifest; hash files.

Manifest keys (``format_version`` 1): ``format_version``, ``pipeline_version``, ``config``, ``config_hash``,
``tile_size``, ``tile_stride``, ``min_valid_fraction``, ``samples``, ``modalities`` (samples per modality),
``sources`` (per source: modality, channels, channel_names, bands, scenes, scenes_without_tiles, samples,
skipped, shards, bytes, fingerprint), ``skipped`` (tiles per reason, all sources), and ``shards``: a list of
``{path, source, modality, samples, bytes, sha256, items: [{key, source, modality, crs, bounds}]}`` with
``path`` relative to the dataset directory.
"""

from __future__ import annotations

from pathlib import Path

from ringmoe.core.files import atomic_write_json as write_json_atomic
from ringmoe.core.files import sha256_file
from ringmoe.core.schema import MANIFEST_NAME, read_manifest

__all__ = ["manifest_path", "read_manifest", "sha256_file", "write_json_atomic"]


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME

"""What one sample in a shard looks like, shared by the offline writer and the streaming loader.

A shard is a webdataset tar. Each sample has three members under one key:
``<key>.image.npy`` float32 (C, H, W) normalized model input, channels in the modality group's order;
``<key>.valid.npy`` uint8 (H, W), 1 where every band had valid data;
``<key>.json`` metadata: source, modality, scene, crs, bounds, transform, tile row/col, band names.
The dataset directory holds ``manifest.json`` (``MANIFEST_NAME``) listing every shard with its sha256.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from ringmoe.core.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
IMAGE_EXT = "image.npy"
VALID_EXT = "valid.npy"
META_EXT = "json"
SAMPLE_EXTS = (IMAGE_EXT, VALID_EXT, META_EXT)


def sample_key(source: str, scene: str, row: int, col: int) -> str:
    """Webdataset keys must not contain dots: they split the key from the member extension."""
    return f"{source}-{scene}-r{row:05d}-c{col:05d}".replace(".", "_")


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read and check a dataset's manifest; every problem names the manifest file."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; build the dataset with `ringmoe-data build` first")
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


def read_shard_members(path: Path, with_data: bool = True) -> dict[str, dict[str, bytes]]:
    """Group a shard's tar members by sample key, in tar order: ``{key: {ext: bytes}}``.

    With ``with_data=False`` only the member names are read (values are ``b""``). A corrupt or truncated tar
    raises ``DataError`` naming the shard.
    """
    members: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info).read() if with_data else b""  # type: ignore[union-attr]
                members.setdefault(key, {})[ext] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated shard ({exc})") from None
    return members

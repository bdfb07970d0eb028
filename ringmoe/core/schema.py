"""What one sample in a shard looks like, shared by the offline writer and the streaming loader.

A shard is a webdataset tar. Each sample has three members under one key:
``<key>.image.npy`` float32 (C, H, W) normalized model input, channels in the modality group's order;
``<key>.valid.npy`` uint8 (H, W), 1 where every band had valid data;
``<key>.json`` metadata: source, modality, scene, crs, bounds, transform, tile row/col, band names.
The dataset directory holds ``manifest.json`` (``MANIFEST_NAME``) listing every shard with its sha256.
"""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
IMAGE_EXT = "image.npy"
VALID_EXT = "valid.npy"
META_EXT = "json"
SAMPLE_EXTS = (IMAGE_EXT, VALID_EXT, META_EXT)


def sample_key(source: str, scene: str, row: int, col: int) -> str:
    """Webdataset keys must not contain dots: they split the key from the member extension."""
    return f"{source}-{scene}-r{row:05d}-c{col:05d}".replace(".", "_")

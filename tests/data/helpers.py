"""Helpers shared by the loader tests: dataset copies, manifest/index lookups, taking and comparing batches."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np

from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.dataset_format import MANIFEST_NAME
from ringmoe.data.loader import build_loader

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "data" / "demo_build.yaml"


def copy_dataset(source: Path, target: Path) -> Path:
    """A copy of a dataset's manifest, shards and indexes, for tests that damage it."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)
    return target


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def shard_entry(root: Path, shard: str) -> dict:
    return next(e for e in manifest(root)["shards"] if e["path"] == shard)


def index_samples(root: Path, shard: str) -> list[dict]:
    return json.loads((root / f"{shard}.idx.json").read_text())["samples"]


def source_keys(root: Path, source: str) -> set[str]:
    """Every sample key of a single-source stream, from the shard indexes."""
    shards = [e["path"] for e in manifest(root)["shards"] if e["kind"] == "single" and e["stream"] == source]
    return {s["key"] for shard in shards for s in index_samples(root, shard)}


def take(config: DataConfig, batches: int, rank: int = 0, world_size: int = 1) -> list[MultiModalBatch]:
    return list(itertools.islice(iter(build_loader(config, rank, world_size)), batches))


def flat_keys(batches: list[MultiModalBatch], modality: str) -> list[str]:
    return [key for batch in batches for key in batch.keys[modality]]


def same_batches(first: list[MultiModalBatch], second: list[MultiModalBatch]) -> bool:
    """Equal keys and bit-identical images, batch by batch."""
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if a.keys != b.keys or a.images.keys() != b.images.keys():
            return False
        if not all(np.array_equal(a.images[m].numpy(), b.images[m].numpy()) for m in a.images):
            return False
    return True

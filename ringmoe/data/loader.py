"""Stream shards, split them by rank and worker, and yield batches holding every modality.

Each modality has its own endless stream; one step takes ``batch_size_per_modality`` samples from each, so
every rank sees every modality in every step (the MoE's modality routers all run on every rank, which expert
parallelism requires: all ranks must join every all-to-all).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import DataError
from ringmoe.core.schema import IMAGE_EXT, MANIFEST_NAME, META_EXT, read_manifest, read_shard_members


def iter_shard(path: Path) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield (key, image, metadata) from one shard; a corrupt tar or member raises naming the shard."""
    members = read_shard_members(path)
    for key, parts in members.items():
        if IMAGE_EXT not in parts or META_EXT not in parts:
            raise DataError(f"{path}: sample {key!r} lacks {IMAGE_EXT} or {META_EXT} (has {sorted(parts)})")
        image = np.load(io.BytesIO(parts[IMAGE_EXT]), allow_pickle=False)
        if not np.isfinite(image).all():
            raise DataError(f"{path}: sample {key!r} has non-finite pixels")
        yield key, image, json.loads(parts[META_EXT])


class ShardStream(IterableDataset):
    """Endless multi-modal batches for one rank; deterministic for a seed, rank and worker."""

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.config = config
        self.root = Path(config.shards)
        self.rank = rank
        self.world_size = world_size
        manifest = read_manifest(self.root)
        self.shards: dict[str, list[Path]] = {m: [] for m in config.modalities}
        for entry in manifest["shards"]:
            if entry["modality"] in self.shards:
                self.shards[entry["modality"]].append(self.root / entry["path"])
        empty = [m for m, paths in self.shards.items() if not paths]
        if empty:
            raise DataError(f"{self.root / MANIFEST_NAME}: no shards for modalities {empty}")

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _samples(self, modality: str, slot: int, slots: int) -> Iterator[tuple[str, np.ndarray]]:
        """Endless shuffled samples of one modality for this slot.

        With enough shards each slot reads its own shards; with fewer shards than slots (small datasets) every
        slot reads all shards and keeps every ``slots``-th sample, so no slot is left without data.
        """
        shards = sorted(self.shards[modality])
        by_shard = len(shards) >= slots
        epoch = 0
        while True:
            rng = random.Random(f"{self.config.seed}-{modality}-{slot}-{epoch}")
            mine = shards[slot::slots] if by_shard else list(shards)
            rng.shuffle(mine)
            buffer: list[tuple[str, np.ndarray]] = []
            index = 0
            yielded = 0
            for shard in mine:
                for key, image, _ in iter_shard(shard):
                    keep = by_shard or index % slots == slot
                    index += 1
                    if not keep:
                        continue
                    buffer.append((key, image))
                    if len(buffer) >= self.config.shuffle_buffer:
                        yield buffer.pop(rng.randrange(len(buffer)))
                        yielded += 1
            rng.shuffle(buffer)
            yielded += len(buffer)
            yield from buffer
            if yielded == 0:
                raise DataError(f"{self.root}: modality {modality!r} has no samples for rank/worker slot {slot}")
            epoch += 1

    def __iter__(self) -> Iterator[MultiModalBatch]:
        slot, slots = self._slot()
        streams = {m: self._samples(m, slot, slots) for m in self.config.modalities}
        size = self.config.batch_size_per_modality
        while True:
            images, keys = {}, {}
            for modality, stream in streams.items():
                picked = [next(stream) for _ in range(size)]
                keys[modality] = [k for k, _ in picked]
                images[modality] = torch.from_numpy(np.stack([img for _, img in picked]))
            yield MultiModalBatch(images, keys)


def build_loader(config: DataConfig, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader over ``ShardStream``; batches are assembled inside the dataset (batch_size=None)."""
    return DataLoader(
        ShardStream(config, rank, world_size),
        batch_size=None,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )

"""One rank's stream of multi-modal batches, each a pure function of the batch number (see ``loader`` for the
order, the worker split and resume). ``places.PlaceStream`` extends it for pair and sequence samples."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.data.catalog import Catalog, ShardInfo, load_catalog
from ringmoe.data.checks import BadSample, BadShard
from ringmoe.data.mixture import ModalityOrder, resolve_weights
from ringmoe.data.order import SourceOrder
from ringmoe.data.reader import ShardReader
from ringmoe.data.store import open_store

log = logging.getLogger(__name__)


class ShardStream(IterableDataset):
    """Endless batches of one rank from batch ``start`` on; in a DataLoader worker, only that worker's share."""

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        super().__init__()
        config.validate()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"data loader: rank {rank} is not in [0, world_size={world_size})")
        self.config = config
        self.rank, self.world_size, self.start = rank, world_size, start
        store = open_store(config.shards)
        try:
            self.catalog = self._load_catalog(store)
        finally:
            store.close()
        self.weights = resolve_weights(self.catalog, self._streams(), dict(config.source_weights))
        self.orders = {
            modality: ModalityOrder(
                modality,
                [SourceOrder(self.catalog.sources[name], config.seed, rank, world_size, config.shuffle_buffer)
                 for name in weights],
                list(weights.values()),
                config.seed,
                rank,
            )
            for modality, weights in self.weights.items()
        }  # fmt: skip
        self._reader: ShardReader | None = None
        self._reader_pid = -1
        self._warned: set[tuple[str, str]] = set()

    def _load_catalog(self, store) -> Catalog:
        return load_catalog(store, list(self.config.modalities))

    def _streams(self) -> list[str]:
        """The streams every batch draws from: one per modality."""
        return list(self.config.modalities)

    def identity(self) -> dict[str, Any]:
        """What the sample order depends on beyond the catalog, seed, world size and modalities."""
        identity: dict[str, Any] = {"batch_size_per_modality": self.config.batch_size_per_modality}
        if self.config.modality_batch_sizes:
            identity["modality_batch_sizes"] = dict(self.config.modality_batch_sizes)
        return identity

    def resumed(self, start: int) -> "ShardStream":
        """The same stream starting at batch ``start``."""
        stream = copy.copy(self)
        stream.start, stream._reader, stream._reader_pid = start, None, -1
        return stream

    def __iter__(self) -> Iterator[MultiModalBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        number = self.start + worker
        try:
            while True:
                yield self.batch(number)
                number += workers
        finally:
            self.close()

    def batch(self, number: int) -> MultiModalBatch:
        """Batch ``number`` of this rank (a pure function of data, config, rank and world size)."""
        tile = self.catalog.tile_size
        images, keys, quarantined = {}, {}, []
        for modality in self.config.modalities:
            size = self.config.batch_size_of(modality)
            channels = self.catalog.by_modality(modality)[0].channels
            images[modality] = tensor = torch.empty((size, channels, tile, tile), dtype=torch.float32)
            if get_worker_info() is not None:
                tensor.share_memory_()  # filled in place, then sent to the main process without another copy
            out = tensor.numpy()
            keys[modality] = [
                self._sample(
                    self.orders[modality],
                    size * number + slot,
                    lambda reader, shard, index, out=out[slot]: reader.read_into(shard, index, out),
                    quarantined,
                )
                for slot in range(size)
            ]
        return MultiModalBatch(images, keys, quarantined)

    def close(self) -> None:
        if self._reader is not None and self._reader_pid == os.getpid():
            self._reader.close()
        self._reader = None

    def _reader_here(self) -> ShardReader:
        # Open handles must not cross a fork: each process (main or worker) opens its own store.
        if self._reader is None or self._reader_pid != os.getpid():
            channels = {name: source.channels for name, source in self.catalog.sources.items()}
            store = open_store(self.config.shards)
            self._reader = ShardReader(
                store, channels, self.catalog.tile_size, self.config.shard_cache, self.catalog.decoders
            )
            self._reader_pid = os.getpid()
        return self._reader

    def _sample(self, order: ModalityOrder, position: int, read, quarantined: list[dict[str, str]]):
        """``read(reader, shard, index)`` of the sample at ``position``, or else of the next readable one of the
        same source's sequence."""
        source, k = order.at(position)
        reader = self._reader_here()
        # Trying a whole source's worth of samples covers at least one full epoch of this rank.
        for attempt in range(source.source.samples + 1):
            shard, index = source.locate(k + attempt)
            try:
                return read(reader, shard, index)
            except BadSample as bad:
                quarantined.append(self._quarantine(reader, shard, index, bad))
        raise DataError(
            f"{self.catalog.where}: source {source.source.name!r} has no readable sample in "
            f"{source.source.samples + 1} consecutive ones; last problem: {quarantined[-1]['detail']}"
        )

    def _quarantine(self, reader: ShardReader, shard: ShardInfo, index: int, bad: BadSample) -> dict[str, str]:
        where = reader.store.where(shard.path)
        key = reader.key(shard, index)
        if self.config.strict:
            raise DataError(
                f"{where}: sample {key} of source {shard.source!r}: {bad.problem}: {bad.detail} "
                "(data.strict is set; without it the sample is quarantined and replaced)"
            )
        warn_once = (shard.path, "" if isinstance(bad, BadShard) else key)
        if warn_once not in self._warned:
            self._warned.add(warn_once)
            what = "every sample of the shard" if isinstance(bad, BadShard) else f"sample {key}"
            log.warning(
                "%s: quarantined %s, %s: %s; using the next samples of source %r instead",
                where, what, bad.problem, bad.detail, shard.source,
            )  # fmt: skip
        return {"shard": shard.path, "key": key, "problem": bad.problem, "detail": bad.detail}

"""The streaming loader: endless multi-modal batches whose order is a pure function of data, seed and rank.

Batch ``b`` of a rank holds positions ``[b*B, (b+1)*B)`` of every modality's stream (``B`` =
``batch_size_per_modality``, or the modality's entry of ``modality_batch_sizes``); each stream mixes its
modality's sources by weight (``mixture``), each source walks its own shuffled, rank-split epochs (``order``).
Every batch holds every modality: the MoE's modality routers run on every rank, and expert parallelism needs
all ranks in every all-to-all.

Because the order is computed, not replayed, workers only fetch: worker ``w`` of ``W`` makes batches
``start + w, start + w + W, ...`` and the in-order DataLoader hands them out as ``start, start + 1, ...``, so
the sequence does not depend on ``W``. ``ShardLoader`` counts the batches handed out; that count is its whole
resume state, so a resumed run sees exactly the batches an uninterrupted one would, with any worker count.

``rank`` and ``world_size`` are global (``torch.distributed`` rank over all nodes): the split is by global
rank, hence by node too. All ranks consume batches in lockstep, so one rank's state resumes every rank.

A sample that fails a check (missing or truncated shard, checksum mismatch, undecodable npy, wrong dtype or
shape, NaN/inf pixels, bad JSON, unsafe tar member) is logged, counted in ``ShardLoader.report()`` and replaced
by the next readable sample of its source's sequence: a deterministic substitute, so resume stays exact. With
``data.strict`` it raises ``DataError`` instead.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.data.catalog import Catalog, ShardInfo, load_catalog
from ringmoe.data.checks import BadSample, BadShard
from ringmoe.data.mixture import ModalityOrder, resolve_weights
from ringmoe.data.order import SourceOrder
from ringmoe.data.quarantine import QuarantineReport
from ringmoe.data.reader import ShardReader
from ringmoe.data.store import open_store

log = logging.getLogger(__name__)

STATE_VERSION = 1


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


class ShardLoader:
    """Iterate batches of one rank; ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly.

    Each ``iter()`` starts a DataLoader at the first batch not yet handed out (prefetched batches of an
    abandoned iterator are dropped, not counted). Call ``load_state_dict`` before ``iter``.
    """

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1) -> None:
        from ringmoe.data.places import PlaceStream  # places read the same shards through the same machinery

        self.config = config
        self.dataset = (PlaceStream if config.places_per_batch else ShardStream)(config, rank, world_size)
        self.batches = 0
        self._report = QuarantineReport()

    def __iter__(self) -> Iterator[MultiModalBatch]:
        loader = DataLoader(
            self.dataset.resumed(self.batches),
            batch_size=None,  # the dataset makes whole multi-modal batches
            num_workers=self.config.num_workers,
            in_order=True,  # hand batches out in the order they were requested: start, start + 1, ...
        )
        for batch in loader:
            self.batches += 1
            self._report.add(batch.quarantined)
            yield batch

    def report(self) -> dict[str, Any]:
        """Samples quarantined in the batches handed out so far (see ``QuarantineReport.summary``)."""
        return self._report.summary()

    def _identity(self) -> dict[str, Any]:
        """Everything the sample order depends on, besides the batch count."""
        config = self.dataset.config
        return {
            "dataset": self.dataset.catalog.fingerprint,
            "seed": config.seed,
            "world_size": self.dataset.world_size,
            "modalities": list(config.modalities),
            **self.dataset.identity(),
            "shuffle_buffer": config.shuffle_buffer,
            "source_weights": self.dataset.weights,
        }

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-able dict: the batches handed out, what the order depends on, the quarantine counts."""
        return {
            "version": STATE_VERSION,
            "batches": self.batches,
            "rank": self.dataset.rank,
            **self._identity(),
            "quarantined": self._report.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["batches"]``; a state of other data or settings is a ``ConfigError``."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ConfigError(f"data loader state: version {state.get('version')!r}, expected {STATE_VERSION}")
        batches = state.get("batches")
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 0:
            raise ConfigError(f"data loader state: 'batches' is {batches!r}, expected an int >= 0")
        mine = self._identity()
        differ = [
            f"{key}: saved {state.get(key)!r}, now {value!r}" for key, value in mine.items() if state.get(key) != value
        ]
        if differ:
            raise ConfigError(
                "data loader state does not belong to this dataset/config, resuming would change the sample "
                "order; " + "; ".join(differ)
            )
        self.batches = batches
        self._report.load_state_dict(state.get("quarantined", {}))


def build_loader(config: DataConfig, rank: int = 0, world_size: int = 1) -> ShardLoader:
    """The loader of global ``rank`` out of ``world_size`` (``len(config.modalities)`` streams per batch)."""
    return ShardLoader(config, rank, world_size)

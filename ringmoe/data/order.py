"""The sample order of one source on one rank: a pure function of the manifest, seed, rank and world size.

Each source has its own endless run of epochs. Epoch ``e``:

1. the source's shards are shuffled with a seed derived from (seed, source, e);
2. they are split across ranks: by shard (``shards[rank::world]``) when the source has at least ``world``
   shards, else by sample (every ``world``-th sample of the shuffled shard sequence), so no rank is left
   without data. The split is by *global* rank, hence across nodes too: ranks never share a sample in an epoch;
3. the rank's samples pass through a shuffle buffer, simulated on integer sample ids with a seeded generator:
   the permutation is known without I/O, and reads stay near-sequential (a sample is read at most about
   ``shuffle_buffer`` places away from where it sits in its shard).

Sample ids count through the source's shards in path order; ``locate`` maps one back to (shard, index).
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections import OrderedDict

import numpy as np

from ringmoe.core.errors import DataError
from ringmoe.data.catalog import ShardInfo, SourceInfo

EPOCHS_CACHED = 3  # a worker reads around one epoch boundary at a time; a few cover substitutes too


def seeded(*parts: object) -> np.random.Generator:
    """A generator seeded from ``parts`` by sha256: stable across machines and Python runs (no ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def shuffle_buffer(ids: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a ``size``-slot shuffle buffer emits ``ids`` in (fill, then emit a random slot per new item)."""
    if size <= 1 or len(ids) <= 1:
        return ids
    slots = rng.integers(0, size, len(ids)).tolist()
    buffer: list[int] = []
    out: list[int] = []
    for item, slot in zip(ids.tolist(), slots):
        if len(buffer) < size:
            buffer.append(item)
            continue
        out.append(buffer[slot])
        buffer[slot] = item
    rng.shuffle(buffer)
    out.extend(buffer)
    return np.asarray(out, dtype=np.int64)


class SourceOrder:
    """The endless sample sequence of one source for one rank; ``locate(k)`` gives its ``k``-th sample."""

    def __init__(self, source: SourceInfo, seed: int, rank: int, world_size: int, buffer: int) -> None:
        self.source = source
        self.seed, self.rank, self.world_size, self.buffer = seed, rank, world_size, buffer
        self.counts = np.array([s.samples for s in source.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.by_shard = len(source.shards) >= world_size
        if not self.by_shard and source.samples < world_size:
            raise DataError(
                f"source {source.name!r} has {source.samples} samples, fewer than the {world_size} ranks "
                "that must each get a share of it; add data or leave the source out (data.source_weights: 0)"
            )
        self._ends = array("q", [0])  # _ends[e + 1]: samples this rank sees in epochs 0..e (by-shard split)
        self._epochs: OrderedDict[int, np.ndarray] = OrderedDict()

    def _shard_order(self, epoch: int) -> np.ndarray:
        return seeded(self.seed, "shards", self.source.name, epoch).permutation(len(self.source.shards))

    def epoch_length(self, epoch: int) -> int:
        if self.by_shard:
            return int(self.counts[self._shard_order(epoch)[self.rank :: self.world_size]].sum())
        return len(range(self.rank, self.source.samples, self.world_size))

    def epoch(self, epoch: int) -> np.ndarray:
        """Sample ids of ``epoch`` on this rank, in the order they are used."""
        if epoch in self._epochs:
            self._epochs.move_to_end(epoch)
            return self._epochs[epoch]
        order = self._shard_order(epoch)
        if self.by_shard:
            order = order[self.rank :: self.world_size]
        ids = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in order])
        if not self.by_shard:
            ids = ids[self.rank :: self.world_size]
        ids = shuffle_buffer(ids, self.buffer, seeded(self.seed, "buffer", self.source.name, self.rank, epoch))
        self._epochs[epoch] = ids
        if len(self._epochs) > EPOCHS_CACHED:
            self._epochs.popitem(last=False)
        return ids

    def epoch_of(self, k: int) -> tuple[int, int]:
        """(epoch, offset in it) of the ``k``-th sample of the sequence."""
        if not self.by_shard:  # every epoch has the same length
            return divmod(k, self.epoch_length(0))
        # Epoch lengths vary with the shards a rank draws: sum them once, up to the furthest epoch asked for.
        while self._ends[-1] <= k:
            self._ends.append(self._ends[-1] + self.epoch_length(len(self._ends) - 1))
        epoch = bisect.bisect_right(self._ends, k) - 1
        return epoch, k - self._ends[epoch]

    def locate(self, k: int) -> tuple[ShardInfo, int]:
        """The shard and index within it of the ``k``-th sample of this rank's sequence."""
        epoch, offset = self.epoch_of(k)
        sample = int(self.epoch(epoch)[offset])
        shard = int(np.searchsorted(self.starts, sample, side="right")) - 1
        return self.source.shards[shard], sample - int(self.starts[shard])

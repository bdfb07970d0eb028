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

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from ringmoe.config.schema import DataConfig
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.data.places import PlaceStream
from ringmoe.data.quarantine import QuarantineReport
from ringmoe.data.stream import ShardStream

STATE_VERSION = 1


class ShardLoader:
    """Iterate batches of one rank; ``state_dict()`` / ``load_state_dict()`` resume mid-epoch exactly.

    Each ``iter()`` starts a DataLoader at the first batch not yet handed out (prefetched batches of an
    abandoned iterator are dropped, not counted). Call ``load_state_dict`` before ``iter``.
    """

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1) -> None:
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

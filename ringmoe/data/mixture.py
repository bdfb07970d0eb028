"""One modality's endless stream on one rank: its sources mixed by weight, each position drawn at random.

Positions are drawn in chunks of ``CHUNK``. Chunk ``c`` takes its per-source counts from a multinomial and
their arrangement from a random permutation, with a generator seeded by (seed, modality, rank, c): the same
law as independent draws per position, but the number of draws of each source before any chunk is a sum of
small count vectors, so position ``p`` maps to "the k-th sample of source s" without replaying the stream.
Ranks draw independently, so one global step mixes sources even when a weight is small.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ringmoe.core.errors import ConfigError
from ringmoe.data.catalog import Catalog
from ringmoe.data.order import SourceOrder, seeded

CHUNK = 4096
CHUNKS_CACHED = 4


def resolve_weights(catalog: Catalog, modalities: list[str], weights: dict[str, float]) -> dict[str, dict[str, float]]:
    """Normalized weights per modality: ``{modality: {source: weight}}`` without zero-weight sources.

    No weight for any source of a modality: proportional to sample counts. Weights for some of a modality's
    sources but not all would leave the rest undefined, so that is an error, as is a source the dataset lacks.
    """
    absent = sorted(set(weights) - set(catalog.sources))
    if absent:
        raise ConfigError(
            f"data.source_weights names {absent}, not single-source streams of the requested modalities in "
            f"{catalog.where}; those are {sorted(catalog.sources)}"
        )
    resolved = {}
    for modality in modalities:
        sources = catalog.by_modality(modality)
        given = {s.name: weights[s.name] for s in sources if s.name in weights}
        if not given:
            raw = {s.name: float(s.samples) for s in sources}
        elif len(given) < len(sources):
            missing = sorted(s.name for s in sources if s.name not in given)
            raise ConfigError(
                f"data.source_weights sets weights for {sorted(given)} of modality {modality!r} but not for "
                f"{missing}; give every source of the modality a weight (0 leaves one out)"
            )
        else:
            raw = given
        total = sum(raw.values())
        if total <= 0:
            raise ConfigError(f"data.source_weights: the weights of modality {modality!r} sum to 0 ({raw})")
        resolved[modality] = {name: w / total for name, w in raw.items() if w > 0}
    return resolved


class ModalityOrder:
    """Maps a stream position to (source order, k): the k-th sample of that source's sequence on this rank."""

    def __init__(self, modality: str, sources: list[SourceOrder], weights: list[float], seed: int, rank: int):
        self.modality = modality
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.seed, self.rank = seed, rank
        self._before: list[np.ndarray] = [np.zeros(len(sources), dtype=np.int64)]  # draws per source before chunk
        self._chunks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _rng(self, chunk: int) -> np.random.Generator:
        return seeded(self.seed, "mix", self.modality, self.rank, chunk)

    def _counts(self, chunk: int) -> np.ndarray:
        return self._rng(chunk).multinomial(CHUNK, self.weights)

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, how many draws of that source precede it in the chunk)."""
        if chunk in self._chunks:
            return self._chunks[chunk]
        rng = self._rng(chunk)
        counts = rng.multinomial(CHUNK, self.weights)  # the same first draw as _counts(chunk)
        drawn = rng.permutation(np.repeat(np.arange(len(self.sources)), counts))
        nth = np.empty(CHUNK, dtype=np.int64)
        for source in range(len(self.sources)):
            where = np.flatnonzero(drawn == source)
            nth[where] = np.arange(len(where))
        self._chunks[chunk] = (drawn, nth)
        if len(self._chunks) > CHUNKS_CACHED:
            self._chunks.popitem(last=False)
        return drawn, nth

    def at(self, position: int) -> tuple[SourceOrder, int]:
        chunk, offset = divmod(position, CHUNK)
        while len(self._before) <= chunk:
            self._before.append(self._before[-1] + self._counts(len(self._before) - 1))
        drawn, nth = self._chunk(chunk)
        source = int(drawn[offset])
        return self.sources[source], int(self._before[chunk][source] + nth[offset])

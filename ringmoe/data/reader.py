"""Read and check one sample of one shard, with the per-worker caches that keep that cheap.

Random-access stores read a sample's member span (its members are contiguous in the tar) with one ranged
read; stream stores read the whole shard once (tar parsed in stream mode by ``read_shard_members``, which
refuses absolute or '..' member names) into a small LRU of decoded shards. Either way every member is checked
against the digest in the shard's index, and the index against the manifest's sha256.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ringmoe.core.dataset_format import IMAGE_EXT, META_EXT, parse_index, read_shard_members
from ringmoe.core.errors import DataError
from ringmoe.core.tiles import TileDecoder
from ringmoe.data.catalog import ShardInfo
from ringmoe.data.checks import (
    BAD_INDEX,
    MISSING_MEMBER,
    MISSING_SHARD,
    TRUNCATED,
    UNREADABLE_SHARD,
    BadSample,
    BadShard,
    check_digest,
    decode_meta,
    decode_tile,
)
from ringmoe.data.store import Store

INDEXES_CACHED = 256  # parsed indexes are ~100 bytes per sample; this bounds a worker's memory on huge datasets


@dataclass(frozen=True)
class Entry:
    """One sample of a shard index, checked: ``members`` ext -> (data offset, size, digest); the members span
    bytes ``[start, end)`` of the shard."""

    key: str
    members: dict[str, tuple[int, int, str]]
    start: int
    end: int


def parse_entry(raw: Any, number: int) -> Entry | BadSample:
    """The checked entry, or the problem that makes its sample unreadable."""
    members = raw.get("members")
    key = raw.get("key")
    if isinstance(key, str) and isinstance(members, dict) and members and all(map(_is_span, members.values())):
        spans = {ext: (int(v[0]), int(v[1]), v[2]) for ext, v in members.items()}
        # A single or sequence sample has image.npy; a pair has <source>.image.npy per part.
        for ext, found in ((IMAGE_EXT, any(e.endswith(IMAGE_EXT) for e in spans)), (META_EXT, META_EXT in spans)):
            if not found:
                return BadSample(MISSING_MEMBER, f"the index lists no {ext} member for {key} (has {sorted(spans)})")
        start = min(offset for offset, _, _ in spans.values())
        return Entry(key, spans, start, max(offset + size for offset, size, _ in spans.values()))
    return BadSample(BAD_INDEX, f"index entry {number} is malformed: {raw!r:.200}")


class ShardReader:
    """One worker's reader: ``read_into(shard, i, out)`` checks sample ``i`` and writes its image into ``out``,
    or raises ``BadSample`` saying what is wrong (``out`` may then hold part of the bad tile)."""

    def __init__(
        self,
        store: Store,
        channels: dict[str, int],
        tile: int,
        shard_cache: int,
        decoders: dict[str, TileDecoder] | None = None,
    ) -> None:
        self.store = store
        self.channels = channels  # per source
        self.decoders = decoders or {}  # per sensor, for source-encoded tiles
        self.tile = tile
        self.shard_cache = shard_cache
        self._indexes: OrderedDict[str, list[Entry | BadSample]] = OrderedDict()
        self._shards: OrderedDict[str, dict[str, dict[str, bytes]]] = OrderedDict()
        self._bad: dict[str, BadShard] = {}  # shards or indexes that cannot be read, not retried per sample

    def key(self, shard: ShardInfo, i: int) -> str:
        """The sample's key if its index entry is readable, else its position (for reports)."""
        try:
            entry = self._index(shard)[i]
        except BadSample:
            return f"#{i}"
        return entry.key if isinstance(entry, Entry) else f"#{i}"

    def read_into(self, shard: ShardInfo, i: int, out: np.ndarray) -> str:
        """Sample ``i``'s key; its image is copied into ``out`` (float32 ``(C, H, W)``)."""
        key, data, meta = self.read_checked(shard, i, shard.source)
        decoder = self.decoders.get(shard.source)
        image = decode_tile(data, "", meta, decoder, self.channels[shard.source], self.tile, out=out)
        if image is not out:  # a float32 image may view the store's read buffer: copy it out before the next read
            np.copyto(out, image)
        return key

    def read_checked(
        self, shard: ShardInfo, i: int, source: str | None
    ) -> tuple[str, dict[str, bytes | memoryview], dict]:
        """Sample ``i``'s key, its members (every digest checked; they may view the read buffer) and its
        decoded metadata, which must name ``source`` when given (pairs and sequences name their parts)."""
        entry = self._index(shard)[i]
        if isinstance(entry, BadSample):
            raise entry
        if shard.path in self._bad:
            raise self._bad[shard.path]
        data = self._members_random(shard, entry) if self.store.random_access else self._members_whole(shard, entry)
        for ext, (_, _, digest) in entry.members.items():
            if ext not in data:
                raise BadSample(MISSING_MEMBER, f"member {entry.key}.{ext} is not in the shard")
            check_digest(ext, data[ext], digest)
        return entry.key, data, decode_meta(data[META_EXT], source)

    def close(self) -> None:
        self.store.close()

    def _index(self, shard: ShardInfo) -> list[Entry | BadSample]:
        if shard.index in self._bad:
            raise self._bad[shard.index]
        if shard.path in self._indexes:
            self._indexes.move_to_end(shard.path)
            return self._indexes[shard.path]
        where = self.store.where(shard.index)
        try:
            data = self.store.read_bytes(shard.index)
        except (OSError, ValueError) as exc:
            raise self._fail(shard.index, BAD_INDEX, f"cannot read the index {where} ({exc})") from None
        if hashlib.sha256(data).hexdigest() != shard.index_sha256:
            raise self._fail(shard.index, BAD_INDEX, f"index {where} does not match its sha256 in the manifest")
        try:
            samples = parse_index(data, where)
        except DataError as exc:
            raise self._fail(shard.index, BAD_INDEX, str(exc)) from None
        if len(samples) != shard.samples:
            detail = f"index {where} lists {len(samples)} samples, the manifest {shard.samples}"
            raise self._fail(shard.index, BAD_INDEX, detail)
        entries = [parse_entry(raw, number) for number, raw in enumerate(samples)]
        self._indexes[shard.path] = entries
        if len(self._indexes) > INDEXES_CACHED:
            self._indexes.popitem(last=False)
        return entries

    def _fail(self, name: str, problem: str, detail: str) -> BadShard:
        """Remember that ``name`` (a shard or an index) cannot be read, so it is not retried per sample."""
        self._bad[name] = BadShard(problem, detail)
        return self._bad[name]

    def _members_random(self, shard: ShardInfo, entry: Entry) -> dict[str, memoryview]:
        start, end = entry.start, entry.end
        try:
            span = self.store.read_range(shard.path, start, end - start)
        except FileNotFoundError:
            raise self._fail(shard.path, MISSING_SHARD, f"{self.store.where(shard.path)} does not exist") from None
        except OSError as exc:  # fsspec backends retry transient errors themselves
            raise BadSample(UNREADABLE_SHARD, f"ranged read of bytes [{start}, {end}) failed ({exc})") from None
        if len(span) < end - start:
            raise BadSample(
                TRUNCATED, f"the sample needs bytes [{start}, {end}), the shard ends at {start + len(span)}"
            )
        # Members are slices of the one read, not copies.
        return {ext: span[offset - start : offset - start + size] for ext, (offset, size, _) in entry.members.items()}

    def _members_whole(self, shard: ShardInfo, entry: Entry) -> dict[str, bytes]:
        if shard.path in self._shards:
            self._shards.move_to_end(shard.path)
        else:
            self._shards[shard.path] = self._read_whole(shard)
            if len(self._shards) > self.shard_cache:
                self._shards.popitem(last=False)
        return self._shards[shard.path].get(entry.key, {})

    def _read_whole(self, shard: ShardInfo) -> dict[str, dict[str, bytes]]:
        where = self.store.where(shard.path)
        problem = ""
        try:
            stream = self.store.open_stream(shard.path)
        except OSError as exc:
            raise self._fail(shard.path, UNREADABLE_SHARD, f"cannot open {where} ({exc})") from None
        try:
            members = read_shard_members(where, fileobj=stream)
        except DataError as exc:  # corrupt or truncated tar, unsafe or non-file member
            problem = str(exc)
        try:
            # Read to the end before closing, so the command exits by itself rather than by SIGPIPE; then its
            # exit status is the root cause when it failed (a `cat` of a missing file also looks like an empty tar).
            while stream.read(1 << 20):
                pass
            stream.close()
        except OSError as exc:
            problem = f"{where}: reading failed ({exc})"
        if problem:
            raise self._fail(shard.path, UNREADABLE_SHARD, problem)
        return members


def _is_span(value: Any) -> bool:
    """``[offset, size, digest]`` with non-negative int offset and size."""
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value[:2])
        and isinstance(value[2], str)
    )

"""Write samples into webdataset tar shards with their index, atomically, hashing as they are written.

Each shard goes to ``<name>.tmp`` and is renamed into place only once complete and fsynced, so a crash never
leaves a truncated ``.tar`` under a final name; its index (``<name>.idx.json``, member offsets and digests) is
written before the rename. Members get a fixed mtime, so equal samples give byte-identical shards (and equal
sha256) on every rebuild.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ringmoe.core.dataset_format import MANIFEST_FORMAT_VERSION, index_name
from ringmoe.core.digests import member_digest
from ringmoe.core.files import atomic_write_bytes

TAR_BLOCK = tarfile.BLOCKSIZE
TAR_RECORD = tarfile.RECORDSIZE  # tarfile pads the archive to a multiple of this
TAR_END = 2 * TAR_BLOCK  # two zero blocks close an archive
# Member attributes; an int mtime matters: a float one makes tarfile add a pax header to every member.
MEMBER_MTIME = 0
MEMBER_MODE = 0o444


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, MEMBER_MTIME, MEMBER_MODE, "", ""
    return info


def shard_name(stream: str, part: int, index: int) -> str:
    """``<stream>-<part>-<index>.tar``: parts are independent units of ingest work (see ``build``)."""
    return f"{stream}-{part:05d}-{index:05d}.tar"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def json_bytes(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True).encode("utf-8")


def header_bytes(name: str, size: int) -> int:
    """Bytes of one member's header(s), exactly as tarfile encodes them (long names add extra blocks)."""
    if name.isascii() and len(name) <= tarfile.LENGTH_NAME and size < 8**11:
        return TAR_BLOCK  # fits the ustar fields: no pax header (encoding one per member cost 10% of a build)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, MEMBER_MTIME, MEMBER_MODE, "", ""
    return len(info.tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape"))


def member_bytes(name: str, payload: bytes) -> int:
    """Bytes one member takes in the tar: its header(s) plus the payload padded to whole blocks."""
    return header_bytes(name, len(payload)) + -(-len(payload) // TAR_BLOCK) * TAR_BLOCK


def archive_bytes(members_size: int) -> int:
    return -(-(members_size + TAR_END) // TAR_RECORD) * TAR_RECORD


class _HashingFile:
    """File wrapper that feeds every written byte to sha256 (tarfile's stream mode only calls ``write``)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)


class ShardWriter:
    """Write one part of a stream's samples into ``shard_name(stream, part, i)`` shards under ``out_dir``.

    A shard is closed before a sample would push it past ``max_samples`` or ``max_bytes`` (a single sample
    larger than ``max_bytes`` still gets a shard of its own). ``entries`` holds the manifest record of each
    finished shard; ``on_shard(entry)`` is called after each one is in place (the build journals it there).
    ``first_index`` continues the numbering of a resumed part.
    """

    def __init__(
        self,
        out_dir: Path,
        stream: str,
        part: int,
        kind: str,
        modality: str | None,
        max_samples: int,
        max_bytes: int,
        first_index: int = 0,
        on_shard=None,
    ) -> None:
        self.out_dir = out_dir
        self.stream = stream
        self.part = part
        self.kind = kind
        self.modality = modality
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.first_index = first_index
        self.on_shard = on_shard
        self.entries: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._hashing: _HashingFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._index: list[dict[str, Any]] = []
        self._sources: dict[str, int] = {}
        self._members_size = 0

    def write(self, key: str, members: dict[str, bytes], sources: list[str]) -> None:
        """Add one sample (``members``: extension -> bytes) holding data of ``sources``."""
        size = sum(member_bytes(f"{key}.{ext}", payload) for ext, payload in members.items())
        if self._tar is not None and (
            len(self._index) >= self.max_samples or archive_bytes(self._members_size + size) > self.max_bytes
        ):
            self._finish()
        if self._tar is None:
            self._start()
        assert self._tar is not None
        # Members in sorted extension order (webdataset's convention); record where each one's data starts.
        offsets = {}
        position = self._members_size
        for ext in sorted(members):
            payload = members[ext]
            name = f"{key}.{ext}"
            self._tar.addfile(_member_info(name, len(payload)), io.BytesIO(payload))
            offsets[ext] = [
                position + header_bytes(name, len(payload)),
                len(payload),
                member_digest(payload),
            ]
            position += member_bytes(name, payload)
        self._members_size = position
        self._index.append({"key": key, "members": offsets})
        for source in sources:
            self._sources[source] = self._sources.get(source, 0) + 1

    def close(self) -> list[dict[str, Any]]:
        if self._tar is not None:
            self._finish()
        return self.entries

    def abort(self) -> None:
        """Drop the shard in progress (its ``.tmp`` file); finished shards stay."""
        if self._file is not None:
            if self._tar is not None:
                try:  # close the tar stream first, or its finalizer later writes to the closed file
                    self._tar.close()
                except (OSError, ValueError):
                    pass
            self._file.close()
            self._tmp_path().unlink(missing_ok=True)
        self._file = self._hashing = self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _final_path(self) -> Path:
        return self.out_dir / shard_name(self.stream, self.part, self.first_index + len(self.entries))

    def _tmp_path(self) -> Path:
        return self._final_path().with_name(self._final_path().name + ".tmp")

    def _start(self) -> None:
        self._file = open(self._tmp_path(), "wb")
        self._hashing = _HashingFile(self._file)
        # A stream ("w|"): written front to back through the hashing file, never seeked. Plain tarfile rather than
        # webdataset's TarWriter (the same bytes), whose import pulls in torch: ~1.2 s at every worker's start.
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|")
        self._index = []
        self._sources = {}
        self._members_size = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None and self._hashing is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._final_path()
        index = {"format_version": MANIFEST_FORMAT_VERSION, "shard": final.name, "samples": self._index}
        index_bytes = json.dumps(index, separators=(",", ":")).encode("utf-8")
        # Index first: a shard under its final name always has its index beside it.
        atomic_write_bytes(final.with_name(index_name(final.name)), index_bytes)
        os.replace(self._tmp_path(), final)
        entry = {
            "path": final.name,
            "index": index_name(final.name),
            "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
            "sha256": self._hashing.sha256.hexdigest(),
            "bytes": self._hashing.size,
            "samples": len(self._index),
            "kind": self.kind,
            "stream": self.stream,
            "modality": self.modality,
            "sources": dict(sorted(self._sources.items())),
        }
        self.entries.append(entry)
        self._file = self._hashing = self._tar = None
        if self.on_shard is not None:
            self.on_shard(entry)

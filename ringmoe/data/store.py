"""Where a dataset's bytes come from: a local directory, an fsspec URL, or a webdataset ``pipe:`` command.

Every store reads files named relative to the dataset root (``manifest.json``, an index, a shard). Random-access
stores (local, fsspec) read one sample as one ranged read of its member span; stream stores (``pipe:`` and the
other schemes only ``webdataset.gopen`` knows) can only read a file whole, front to back.

A store holds open handles, so each DataLoader worker opens its own (``open_store`` after the fork).
"""

from __future__ import annotations

import os
import posixpath
from collections import OrderedDict
from typing import IO, Any
from urllib.parse import urlparse

import fsspec
from webdataset.gopen import gopen, gopen_schemes

from ringmoe.core.errors import ConfigError

PIPE_PREFIX = "pipe:"
PATH_FIELD = "{path}"
# Open shard handles kept per worker: enough for the shards a shuffle buffer spans, far below fd limits.
MAX_OPEN_FILES = 32


class Store:
    """Read files of one dataset root; ``random_access`` says whether ``read_range`` is available."""

    random_access = True

    def where(self, name: str) -> str:
        """The full path or URL of ``name``, for messages."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def read_range(self, name: str, offset: int, size: int) -> memoryview:
        """``size`` bytes from ``offset``; fewer only if the file ends first (the caller checks). The view may
        share a buffer that the next ``read_range`` overwrites: use or copy it before reading again."""
        raise NotImplementedError

    def open_stream(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HandleCache:
    """Least-recently-used open handles, closed when evicted."""

    def __init__(self, opener, closer, size: int = MAX_OPEN_FILES) -> None:
        self.opener, self.closer, self.size = opener, closer, size
        self.handles: OrderedDict[str, Any] = OrderedDict()

    def get(self, name: str) -> Any:
        if name in self.handles:
            self.handles.move_to_end(name)
            return self.handles[name]
        handle = self.opener(name)
        self.handles[name] = handle
        if len(self.handles) > self.size:
            self.closer(self.handles.popitem(last=False)[1])
        return handle

    def close(self) -> None:
        while self.handles:
            self.closer(self.handles.popitem()[1])


class LocalStore(Store):
    """A local directory; a sample is one ``os.preadv`` (no shared file position) into a reused buffer: a fresh
    buffer per read of a ~100 kB sample costs more in page faults than the read itself."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fds = _HandleCache(lambda name: os.open(self.where(name), os.O_RDONLY), os.close)
        self._buffer = bytearray()

    def where(self, name: str) -> str:
        return os.path.join(self.root, name)

    def read_bytes(self, name: str) -> bytes:
        with open(self.where(name), "rb") as handle:
            return handle.read()

    def read_range(self, name: str, offset: int, size: int) -> memoryview:
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        return view[: os.preadv(self._fds.get(name), [view], offset)]

    def close(self) -> None:
        self._fds.close()


class FsspecStore(Store):
    """Any fsspec filesystem (``s3://``, ``gs://``, ``file://``, ``memory://``...): seek + read per sample."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self._files = _HandleCache(lambda name: self.fs.open(self._path(name), "rb"), lambda f: f.close())

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open(self._path(name), "rb") as handle:
            return handle.read()

    def read_range(self, name: str, offset: int, size: int) -> memoryview:
        handle = self._files.get(name)
        handle.seek(offset)
        return memoryview(handle.read(size))

    def close(self) -> None:
        self._files.close()


class StreamStore(Store):
    """Files read whole through ``webdataset.gopen``: a ``pipe:`` command template, or ``root/name`` URLs."""

    random_access = False

    def __init__(self, url: str) -> None:
        self.url = url

    def where(self, name: str) -> str:
        if self.url.startswith(PIPE_PREFIX):
            return self.url.replace(PATH_FIELD, name)
        return f"{self.url.rstrip('/')}/{name}"

    def read_bytes(self, name: str) -> bytes:
        with self.open_stream(name) as stream:
            return stream.read()

    def open_stream(self, name: str) -> IO[bytes]:
        # The command's exit status is checked when the stream is closed: a failing `cat`/`curl` raises OSError.
        return gopen(self.where(name), "rb")


def _fsspec_knows(protocol: str) -> bool:
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):
        return False
    return True


def open_store(url: str) -> Store:
    """The store for ``DataConfig.shards``; a URL no reader understands is a ``ConfigError``."""
    if url.startswith(PIPE_PREFIX):
        if PATH_FIELD not in url:
            raise ConfigError(
                f"data.shards {url!r}: a pipe: command needs {PATH_FIELD} where the file name goes, "
                "e.g. 'pipe:cat /data/ds/{path}'"
            )
        return StreamStore(url)
    scheme = urlparse(url).scheme
    if "://" not in url or len(scheme) <= 1:  # a plain path (a one-letter scheme is a Windows drive)
        return LocalStore(url)
    if _fsspec_knows(scheme):
        return FsspecStore(url)
    if scheme in gopen_schemes:
        return StreamStore(url)
    raise ConfigError(
        f"data.shards {url!r}: neither fsspec nor webdataset reads {scheme}:// URLs "
        "(install the fsspec backend, e.g. s3fs or gcsfs, or use a pipe: command)"
    )

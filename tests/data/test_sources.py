"""The same dataset read from a local path, fsspec URLs and a webdataset pipe: gives the same batches."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from ringmoe.config.schema import DataConfig
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.data.loader import ShardLoader
from ringmoe.data.store import FsspecStore, LocalStore, StreamStore, open_store
from tests.data.helpers import same_batches, take


def config(shards: str, **overrides) -> DataConfig:
    return DataConfig(shards=shards, batch_size_per_modality=3, shuffle_buffer=8, seed=3, **overrides)


@pytest.fixture
def memory_copy(small_shards: Path):
    """The dataset copied into fsspec's in-memory filesystem (a stand-in for an object store)."""
    fs = fsspec.filesystem("memory")
    root = f"/ds-{uuid.uuid4().hex}"
    for path in small_shards.iterdir():
        if path.is_file():
            fs.pipe(f"{root}/{path.name}", path.read_bytes())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_file_url_reads_like_the_local_path(small_shards: Path) -> None:
    assert isinstance(open_store(f"file://{small_shards}"), FsspecStore)
    assert same_batches(take(config(f"file://{small_shards}"), 6), take(config(str(small_shards)), 6))


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_url_reads_like_the_local_path(small_shards: Path, memory_copy: str, workers: int) -> None:
    assert same_batches(take(config(memory_copy, num_workers=workers), 6), take(config(str(small_shards)), 6))


@pytest.mark.parametrize("workers", [0, 2])
def test_pipe_command_reads_like_the_local_path(small_shards: Path, workers: int) -> None:
    """Shards streamed whole through `cat` (tar parsed in stream mode, kept in the per-worker shard cache)."""
    url = f"pipe:cat {small_shards}/{{path}}"
    assert isinstance(open_store(url), StreamStore)
    local = take(config(str(small_shards)), 6)
    assert same_batches(take(config(url, num_workers=workers, shard_cache=2), 6), local)


def test_store_choice_and_bad_urls(small_shards: Path) -> None:
    assert isinstance(open_store(str(small_shards)), LocalStore)
    with pytest.raises(ConfigError, match=r"needs \{path\}"):
        open_store(f"pipe:cat {small_shards}/manifest.json")
    with pytest.raises(ConfigError, match="nosuchscheme://"):
        open_store("nosuchscheme://bucket/ds")


def test_missing_pipe_manifest_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"pipe:cat {tmp_path}/manifest.json"):
        ShardLoader(config(f"pipe:cat {tmp_path}/{{path}}"))

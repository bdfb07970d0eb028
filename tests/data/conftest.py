"""Fixtures for the loader tests: the demo build with small shards, so every source has several of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.helpers import DEMO_CONFIG


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo rasters built with at most 8 samples per shard (landsat7_etm: 16 shards, capella_quadpol: 2)."""
    from data_pipeline.build import build_from_file

    out = tmp_path_factory.mktemp("small_shards")
    build_from_file(DEMO_CONFIG, [f"out_dir={out}", "shard_max_samples=8"])
    return out

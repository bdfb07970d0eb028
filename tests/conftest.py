"""Shared fixtures: single-threaded torch, the real sample pack and the in-repo demo data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "demo_data"
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_pack() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip("shared real-sample pack not present beside the repo")
    return SHARED_REAL


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards built once per session from the in-repo real samples with the demo build config."""
    from data_pipeline.build import build_from_file

    out = tmp_path_factory.mktemp("demo_shards")
    build_from_file(REPO / "configs" / "data" / "demo_build.yaml", [f"out_dir={out}"])
    return out

"""Fixtures for the offline ingest tests: the sensor registry and one demo build shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.build import build
from data_pipeline.config import load_build_config
from ringmoe.core.sensors import SensorRegistry, load_registry
from tests.data_pipeline.helpers import DEMO_CONFIG


@pytest.fixture(scope="session")
def registry() -> SensorRegistry:
    return load_registry()


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The demo config built once into a temporary directory; tests that damage it work on a copy."""
    out_dir = tmp_path_factory.mktemp("demo") / "shards"
    config = load_build_config(DEMO_CONFIG, [f"out_dir={out_dir}"])
    build(config, config_dir=DEMO_CONFIG.parent)
    return out_dir

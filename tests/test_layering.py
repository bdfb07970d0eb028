"""The layer rules of STYLE.md, enforced with import-linter (contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports not installed: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([lint], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ingest_starts_without_torch() -> None:
    """``ringmoe-data`` and every spawned ingest worker import ``data_pipeline`` only: pulling torch in (webdataset
    does) costs ~1.2 s per process for nothing the ingest uses."""
    code = (
        "import sys, data_pipeline.cli, data_pipeline.build; "
        "print([m for m in ('torch', 'webdataset') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"

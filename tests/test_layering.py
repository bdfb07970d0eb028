"""The layer rules of STYLE.md, enforced with import-linter (contracts in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports not installed: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([lint], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout

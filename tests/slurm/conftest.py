"""A real SLURM cluster for these tests: ../shared/slurm-local started as root (CI runs as root), else skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SLURM_LOCAL = Path(__file__).resolve().parents[3] / "shared" / "slurm-local"
SLURM_CONF = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local")) / "etc" / "slurm.conf"


@pytest.fixture(scope="session")
def slurm_cluster():
    """Environment for sbatch/scontrol against a live 2-node cluster (started here if not up, and then stopped
    again at the end of the session)."""
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    started_here = False
    if not _cluster_up(env):
        if not (SLURM_LOCAL / "start.sh").is_file():
            pytest.skip(f"no SLURM cluster and no {SLURM_LOCAL}/start.sh to start one")
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster, and starting slurm-local needs root (slurmd runs jobs as the submitter)")
        started = subprocess.run(
            ["bash", str(SLURM_LOCAL / "start.sh"), "--nodes", "2", "--quiet"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert _cluster_up(env), "slurm-local started but sinfo shows no node"
        started_here = True
    yield env
    if started_here:
        subprocess.run(["bash", str(SLURM_LOCAL / "stop.sh")], capture_output=True, timeout=120)


def _cluster_up(env: dict[str, str]) -> bool:
    if not shutil.which("sinfo") or not SLURM_CONF.is_file():
        return False
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and result.stdout.strip() != ""

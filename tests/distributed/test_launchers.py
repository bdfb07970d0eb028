"""`ringmoe train` under torchrun and under the deepspeed launcher: same data, seed and EP=2 give the same
losses, step for step (CPU, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss/total"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def launch(script: str, demo_shards: Path, output_dir: Path, port: int) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NPROC_PER_NODE": "2",
        "RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "MASTER_PORT": str(port),
    }
    overrides = [f"data.shards={demo_shards}", f"train.output_dir={output_dir}", "train.steps=3"]
    command = ["bash", str(REPO / "launch" / script), "--config", str(REPO / "configs" / "tiny.yaml"), *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_torchrun_and_deepspeed_launcher_agree(demo_shards: Path, tmp_path: Path) -> None:
    from tests.distributed.spawn import free_port

    launch("torchrun.sh", demo_shards, tmp_path / "torchrun", free_port())
    launch("deepspeed.sh", demo_shards, tmp_path / "deepspeed", free_port())
    first, second = losses(tmp_path / "torchrun"), losses(tmp_path / "deepspeed")
    assert len(first) == 3 and first == second

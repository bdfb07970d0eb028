"""slurm/train.sbatch on a real 2-node SLURM cluster: 2 tasks (one torchrun per node, EP=2 over both) train,
`scancel --signal=USR1 --batch` makes them save and exit, the script requeues the job, and the requeued run
resumes from that checkpoint and finishes."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
STEPS = 30


def _job_field(job: str, field: str, env: dict[str, str]) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30, env=env)
    match = re.search(rf"\b{field}=(\S+)", shown.stdout)
    return match.group(1) if match else ""


def _wait_for(condition, what: str, timeout_s: float, job: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            text = log.read_text()[-4000:] if log.exists() else "(no job output)"
            raise AssertionError(f"timed out waiting for {what} (job {job})\n{text}")
        time.sleep(0.5)


def test_sbatch_trains_on_two_nodes_requeues_on_usr1_and_resumes(slurm_cluster, demo_shards, tmp_path):
    env = {**slurm_cluster, "OMP_NUM_THREADS": "1", "RUN_DIR": str(tmp_path / "run")}
    log = tmp_path / "job.out"
    submit = subprocess.run(
        [
            "sbatch", "--parsable", "--nodes=2", "-t", "15", f"--output={log}", "--export=ALL",
            str(REPO / "slurm" / "train.sbatch"), "--config", str(REPO / "configs" / "tiny.yaml"),
            f"data.shards={demo_shards}", f"train.steps={STEPS}", "parallel.expert_parallel_size=2",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, "3 steps", 400, job, log)
        signal = subprocess.run(
            ["scancel", "--signal=USR1", "--batch", job], capture_output=True, text=True, timeout=30, env=env
        )
        assert signal.returncode == 0, signal.stderr
        _wait_for(lambda: _job_field(job, "Restarts", env) == "1", "the requeue", 300, job, log)
        _wait_for(lambda: _job_field(job, "JobState", env) == "COMPLETED", "the resumed run", 500, job, log)
    finally:
        if _job_field(job, "JobState", env) not in ("COMPLETED", "FAILED", "CANCELLED"):
            subprocess.run(["scancel", job], capture_output=True, timeout=30, env=env)
    text = log.read_text()
    assert "restart 0 on node[1-2]" in text and "restart 1 on node[1-2]" in text, text[-4000:]
    assert "USR1 received" in text and "requeueing job" in text, text[-4000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    preempted_at = re.search(r"trained steps 1\.\.(\d+) .*\(preempted", text)
    assert preempted_at, text[-4000:]
    stop = int(preempted_at.group(1))
    assert 3 <= stop < STEPS and f"trained steps {stop + 1}..{STEPS}" in text
    # Every step ran exactly once across the two runs: no lost and no repeated work.
    assert steps == list(range(1, STEPS + 1)), steps
    assert (tmp_path / "run" / "checkpoints" / f"global_step{STEPS}" / "ringmoe_meta.json").is_file()
    assert not (tmp_path / "run" / "PREEMPTED").exists()

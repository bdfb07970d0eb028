"""The SLURM scripts on a real 2-node cluster: slurm/train.sbatch (2 tasks, one torchrun per node, EP=2 over
both) trains, `scancel --signal=USR1 --batch` makes it save and exit, the script requeues the job, the requeued
run resumes from that checkpoint and finishes; consolidate and export jobs chained with afterok turn the result
into a HuggingFace directory; the ingest job array plus its manifest job build the demo shards."""

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


def _sbatch(args: list[str], env: dict[str, str], cwd: Path = REPO) -> str:
    submit = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert submit.returncode == 0, submit.stderr
    return submit.stdout.strip().split(";")[0]


def _wait_done(job: str, env: dict[str, str], log: Path, timeout_s: float = 300) -> None:
    _wait_for(lambda: _job_field(job, "JobState", env) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
              f"job {job} to end", timeout_s, job, log)  # fmt: skip
    assert _job_field(job, "JobState", env) == "COMPLETED", log.read_text()[-4000:] if log.exists() else job


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

    # Post-training jobs on the result: consolidate, prune once it succeeded, then export the pruned model.
    consolidate_log, export_log = tmp_path / "consolidate.out", tmp_path / "export.out"
    checkpoint = tmp_path / "run" / "checkpoints" / f"global_step{STEPS}"
    consolidate = _sbatch(
        [
            f"--output={consolidate_log}",
            str(REPO / "slurm" / "consolidate.sbatch"),
            str(checkpoint),
            str(tmp_path / "c"),
        ],
        env,
    )
    prune_log = tmp_path / "prune.out"
    prune = _sbatch(
        [f"--dependency=afterok:{consolidate}", f"--output={prune_log}", str(REPO / "slurm" / "prune.sbatch"),
         str(tmp_path / "c"), str(tmp_path / "pruned"), "--config", str(REPO / "configs" / "tiny.yaml"),
         f"data.shards={demo_shards}", "prune.modal_experts=[2,2]", "prune.collab_experts=[2,2]"],
        env,
    )  # fmt: skip
    export = _sbatch(
        [f"--dependency=afterok:{prune}", f"--output={export_log}", str(REPO / "slurm" / "export.sbatch"),
         str(tmp_path / "pruned"), str(tmp_path / "hf")],
        env,
    )  # fmt: skip
    _wait_done(consolidate, env, consolidate_log)
    _wait_done(prune, env, prune_log)
    _wait_done(export, env, export_log)
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["modal_experts"] == [2, 2]
    assert "retention" in prune_log.read_text()


def test_ingest_job_array_then_manifest_job_equal_a_serial_build(slurm_cluster, demo_shards, tmp_path):
    out = tmp_path / "shards"
    config = REPO / "configs" / "data" / "demo_build.yaml"
    submitted = subprocess.run(
        ["bash", str(REPO / "slurm" / "submit_ingest.sh"), "3", "--config", str(config), f"out_dir={out}"],
        cwd=tmp_path, env=slurm_cluster, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    array, manifest_job = submitted.stdout.split()
    log = tmp_path / f"ringmoe-ingest-manifest-{manifest_job}.out"
    _wait_done(manifest_job, slurm_cluster, log)
    assert re.search(r"verified .*: ok", log.read_text()), log.read_text()[-3000:]
    for task in range(3):
        assert (tmp_path / f"ringmoe-ingest-{array}_{task}.out").read_text().startswith(f"slice {task}:3: built")
    manifest = json.loads((out / "manifest.json").read_text())
    serial = json.loads((demo_shards / "manifest.json").read_text())
    assert [(s["path"], s["sha256"]) for s in manifest["shards"]] == [
        (s["path"], s["sha256"]) for s in serial["shards"]
    ]

"""Resume under DeepSpeed EP=2 on 2 processes: a run killed (SIGKILL) in the middle of a save and resumed with
``--resume auto`` gives, bitwise, the losses of the run that was never interrupted; the save that was killed
leaves the previous checkpoint intact. Preemption by signal saves, exits 75 and resumes the same way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.spawn import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def _command(demo_shards: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
        f"data.shards={demo_shards}", f"train.output_dir={output_dir}", f"train.steps={STEPS}",
        "parallel.expert_parallel_size=2", *extra,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=500)


def _losses(output_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss/total"]) for row in rows]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker (torchrun's workers are not all in its process group)."""
    import psutil

    tree = [proc.pid] + [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs([p for p in map(_process_or_none, tree[1:]) if p], timeout=60)


def _process_or_none(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_kill_mid_save_then_resume_is_bitwise_identical(demo_shards: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    done = _run(_command(demo_shards, full))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reference = _losses(full)
    assert [step for step, _ in reference] == list(range(1, STEPS + 1))

    run = tmp_path / "interrupted"
    checkpoints = run / "checkpoints"
    proc = subprocess.Popen(
        _command(demo_shards, run, "train.save_every=3"),
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    staging = checkpoints / f"global_step{STEPS}.tmp"
    try:
        deadline = time.monotonic() + 400
        while not staging.exists():  # the final save has begun writing
            assert proc.poll() is None, "the run ended before its final save could be interrupted"
            assert time.monotonic() < deadline, "no final save within 400 s"
            time.sleep(0.002)
    finally:
        _kill_group(proc)
    assert not (checkpoints / f"global_step{STEPS}").exists(), "the killed save must not look complete"
    previous = checkpoints / "global_step3"
    assert (previous / "ringmoe_meta.json").is_file() and (checkpoints / "latest").read_text().strip() == previous.name

    resumed = _run(_command(demo_shards, run, "train.save_every=3", "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "trained steps 4..6" in resumed.stdout, resumed.stdout[-2000:]
    logged = _losses(run)
    # Steps 1..3 of the first run, whatever it logged after them, then 4..6 of the resumed run.
    assert logged[:3] == reference[:3]
    assert logged[-3:] == reference[3:], (logged, reference)  # bitwise: float equality of every loss
    assert (checkpoints / f"global_step{STEPS}" / "ringmoe_meta.json").is_file() and not staging.exists()
    # Device-hours carry across the restart: the resumed step 4 adds to what the checkpoint of step 3 held.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    saved = json.loads((previous / "ringmoe_meta.json").read_text())["callbacks"]["accounting"]["device_hours"]
    assert saved == rows[2]["accounting/device_hours"] and rows[-3]["accounting/device_hours"] > saved


def test_signal_saves_exits_for_requeue_and_resumes(demo_shards: Path, tmp_path: Path) -> None:
    """SIGUSR1 to a trainer -> the step finishes on every rank, a checkpoint is saved, exit code 75 (EX_TEMPFAIL)
    and a PREEMPTED marker; ``--resume auto`` then finishes the run. The stop file (what the SLURM script
    touches) is tested the same way; ``keep_last`` rotates old checkpoints."""
    run = tmp_path / "run"
    stop_file = tmp_path / "stop"
    command = [
        *_command(demo_shards, run, "train.save_every=1", "train.keep_last=2"),
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(RINGMOE_STOP_FILE=str(stop_file)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not (run / "checkpoints" / "global_step2" / "ringmoe_meta.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint of step 2"
            time.sleep(0.01)
        stop_file.touch()
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    marker = json.loads((run / "PREEMPTED").read_text())
    assert "stop file" in marker["reason"] and 2 <= marker["step"] < STEPS, output[-3000:]
    complete = sorted(p.name for p in (run / "checkpoints").iterdir() if (p / "ringmoe_meta.json").is_file())
    assert len(complete) == 2 and f"global_step{marker['step']}" in complete  # keep_last=2
    stop_file.unlink()
    resumed = _run(_command(demo_shards, run, "--resume", "auto"), RINGMOE_STOP_FILE=str(stop_file))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"trained steps {marker['step'] + 1}..{STEPS}" in resumed.stdout
    assert not (run / "PREEMPTED").exists()


def test_sigusr1_to_the_trainers_exits_75(demo_shards: Path, tmp_path: Path) -> None:
    """Without a launcher in between (``srun`` starts the ranks itself), the ranks catch the signal."""
    from tests.distributed.spawn import free_port as port

    run = tmp_path / "run"
    master = str(port())
    procs = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=master)
        command = [
            sys.executable, "-m", "ringmoe.cli.main", "train", "--config", str(REPO / "configs" / "tiny.yaml"),
            f"data.shards={demo_shards}", f"train.output_dir={run}", "train.steps=2000",
            "parallel.expert_parallel_size=2",
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        deadline = time.monotonic() + 400
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGUSR1)  # one rank only: the all-reduce makes both stop
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [75, 75], [p.stderr.read()[-2000:] for p in procs]
    marker = json.loads((run / "PREEMPTED").read_text())
    assert marker["reason"] == "signal on 1 rank(s)" and (run / "checkpoints" / f"global_step{marker['step']}").is_dir()


def test_tensor_parallel_run_resumes_bitwise(demo_shards: Path, tmp_path: Path) -> None:
    """TP=2 (megatron-core layers inside DeepSpeed): resuming from the step-3 checkpoint repeats steps 4..6
    exactly (megatron's load hook would otherwise make every TP checkpoint unloadable)."""
    import shutil

    tp = ["parallel.tensor_parallel_size=2", "parallel.expert_parallel_size=1", "model.capacity_factor=1.25"]
    run = tmp_path / "run"
    done = _run(_command(demo_shards, run, "train.save_every=3", *tp))
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _losses(run)
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "global_step3", again / "checkpoints" / "global_step3")
    resumed = _run(_command(demo_shards, again, "train.save_every=3", *tp, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(again) == reference[3:]


def test_view_contrast_run_resumes_bitwise(demo_shards: Path, tmp_path: Path) -> None:
    """The recipe's two views are drawn from the saved generator and contrasted across both ranks: a run stopped
    at step 2 and resumed logs the losses of the run that went straight to step 4."""
    views = ("objective.views.weight=1", "objective.views.projection_dim=16", "train.steps=4")
    full = _run(_command(demo_shards, tmp_path / "full", *views))
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    first = _run(_command(demo_shards, tmp_path / "split", *views[:2], "train.steps=2"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    resumed = _run(_command(demo_shards, tmp_path / "split", *views, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    reference = _losses(tmp_path / "full")
    assert len(reference) == 4 and _losses(tmp_path / "split") == reference  # bitwise
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["loss/views"] > 0 for row in rows)

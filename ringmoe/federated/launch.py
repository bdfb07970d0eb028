"""Run a whole federation on one machine as separate processes over localhost: the Flower server, then one
process per client (each reads only its own files), exactly as on separate machines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ringmoe.config.federated import load_federated_config
from ringmoe.core.errors import TrainingError


def _command(role: str, config_path: Path, overrides: Sequence[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ringmoe.cli.main",
        f"federated-{role}",
        "--config",
        str(config_path),
        *extra,
        *overrides,
    ]


def _wait_for_port(address: str, process: subprocess.Popen, timeout: float) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TrainingError(f"the Flower server exited ({process.returncode}) before listening on {address}")
        with socket.socket() as probe:
            if probe.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.2)
    raise TrainingError(f"the Flower server did not listen on {address} within {timeout:.0f} s")


def run_local(config_path: Path, overrides: Sequence[str] = (), timeout: float = 900.0) -> Path:
    """Server + clients as processes; returns the output directory once every process exited cleanly."""
    config = load_federated_config(config_path, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen(_command("server", config_path, overrides), env=env)
    clients: list[subprocess.Popen] = []
    try:
        _wait_for_port(config.address, server, timeout=60)
        clients = [
            subprocess.Popen(_command("client", config_path, overrides, "--client", c.name), env=env)
            for c in config.clients
        ]
        deadline = time.monotonic() + timeout
        for process in [server, *clients]:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code != 0:
                raise TrainingError(f"federated process {' '.join(process.args[3:6])} exited with {code}")
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.kill()
    return Path(config.output_dir)

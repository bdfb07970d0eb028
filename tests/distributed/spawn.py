"""Run a function in N real processes over gloo, with a hard timeout and clean process-group teardown."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from typing import Callable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn: Callable, rank: int, world: int, port: int, args: tuple, errors) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    finished = False
    try:
        fn(rank, world, *args)
        finished = True
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            # Like the CLI's shutdown: every rank done before the group goes, or a rank still talking to a peer
            # that is tearing its connections down can abort in gloo (seen once as SIGABRT at exit). Only after
            # success: a failed rank's peers may never reach the barrier.
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def run_distributed(fn: Callable, world: int, *args: object, timeout: float = 300.0) -> None:
    """Start ``world`` processes running ``fn(rank, world, *args)``; fail on any error or on timeout."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, args, errors)) for r in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for proc in alive:
        proc.kill()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if failures:
        rank, trace = failures[0]
        raise AssertionError(f"rank {rank} failed:\n{trace}")
    if alive:
        raise AssertionError(f"{len(alive)} process(es) still running after {timeout}s")
    codes = [p.exitcode for p in procs]
    assert all(code == 0 for code in codes), f"exit codes {codes}"

"""Preemption: SIGUSR1/SIGTERM (or a stop file) ask the run to finish its step, save and exit for a requeue.

Under SLURM, ``--signal=B:USR1@120`` signals only the batch shell; ``slurm/train.sbatch`` traps it and touches
the file named by ``RINGMOE_STOP_FILE``, which rank 0 polls every step. Signals sent to the trainers
themselves (``srun`` without a launcher, ``kill``) are caught directly. Ranks agree through the per-step
all-reduce, so all of them stop after the same step.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

STOP_FILE_ENV = "RINGMOE_STOP_FILE"
# EX_TEMPFAIL: "try again later"; slurm/train.sbatch requeues on it (or on the marker below).
REQUEUE_EXIT_CODE = 75
PREEMPTED_MARKER = "PREEMPTED"


class PreemptionWatch:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.signal_name: str | None = None
        stop_file = os.environ.get(STOP_FILE_ENV)
        self.stop_file = Path(stop_file) if stop_file else None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, _frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def flags(self) -> tuple[float, float]:
        """(this process saw a signal, the stop file exists), as numbers to all-reduce."""
        return float(self.signal_name is not None), float(self.stop_file is not None and self.stop_file.exists())

    @staticmethod
    def describe(signalled_ranks: float, stop_file_ranks: float) -> str:
        parts = [f"signal on {int(signalled_ranks)} rank(s)"] if signalled_ranks else []
        return ", ".join(parts + (["stop file"] if stop_file_ranks else []))

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

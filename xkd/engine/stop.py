"""Stop requests by signal: the trainer checkpoints at the next step boundary and returns.

SIGTERM is what a scheduler sends before killing a job (preemption, ``scancel``, ``scontrol
requeue``); SIGUSR1 / SIGUSR2 are the warnings SLURM sends ahead of a time limit
(``#SBATCH --signal=USR1@90``; submitit asks for USR2). The names of the signals received are
kept, so a SLURM task can tell a time-limit warning (requeue yourself) from a scheduler's
SIGTERM (the scheduler decides what comes next).
"""
from __future__ import annotations

import signal

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Installs handlers for ``signals``; ``requested`` turns True at the first one."""

    def __init__(self, signals=DEFAULT_SIGNALS):
        self.requested = False
        self.received: list[str] = []
        for sig in signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True
        self.received.append(signal.Signals(signum).name)

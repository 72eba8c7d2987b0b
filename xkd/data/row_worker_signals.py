"""The job's signals are not the loaders' worker processes': imported by the row workers' fork server
(``xkd.data.row_workers.PRELOAD``), whose forked workers inherit what it ignores, and by the
PyTorch loader's DataLoader workers. Never import it in a training process: it would stop the
training process's own stop requests.

SLURM (``scontrol requeue``, ``scancel``, preemption, ``--signal`` time-limit warnings) signals every
process of a job step, the workers and their server too; the training process turns SIGTERM / USR1 /
USR2 into "checkpoint at the next step" (xkd.engine.stop), and Ctrl-C into KeyboardInterrupt. A
worker killed by them would fail the very batches that checkpoint needs.
"""
from __future__ import annotations

import signal

JOB_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def ignore_job_signals() -> None:
    for sig in JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


ignore_job_signals()

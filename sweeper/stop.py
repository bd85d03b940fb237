"""A stop signal to a sweep whose runs live in worker processes (`hydra/launcher=joblib`) stops
the sweep as it stops a single run: every running run checkpoints at its step and records
`preempted`, no further run starts, and the main process ends with one line and a non-zero
status once its workers are done, so the same command resumes the sweep.

A `timeout`, `kill` or scheduler signals only the main process, and joblib's workers would
train on without it. The main process passes each stop signal on to every worker of its own
that holds the lock of a run in the sweep folder, and keeps doing so for a worker that takes a
lock afterwards (one that was between two runs). A worker that has been told takes no new run.
A worker is signalled only while it holds a run: one that has not run anything yet has Python's
default handlers, and a signal would kill it (joblib then kills every worker, mid-checkpoint).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

from sweeper.errors import SweeperError
from sweeper.lock import holder_pid

# SIGTERM: pre-emption; SIGUSR1/SIGUSR2: time-limit warnings (SLURM's --signal, submitit's USR2);
# SIGINT: Ctrl-C, a stop like the others rather than a traceback and a run left `running`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
POLL_SECONDS = 0.2


def in_workers(launcher: Any) -> bool:
    """True for a launcher whose runs live in worker processes of this one (joblib's)."""
    return str(launcher.get("_target_", "")).endswith("JoblibLauncher")


class SweepStopped(SweeperError):
    """The sweep's main process was signalled; its runs are checkpointed and resumable."""

    def __init__(self, signum: int, told: int) -> None:
        super().__init__(f"the sweep was stopped by {signal.Signals(signum).name}: {told} running "
                         f"run(s) checkpointed and recorded preempted, no further run started; "
                         f"rerun the same command to resume")
        self.code = 128 + signum  # the shell's status for a process ended by that signal


class Sweep:
    """The main process's side: pass stop signals on to the workers that hold runs."""

    caught: list[int] = []
    told: set[tuple[int, str]] = set()  # (worker pid, run dir) already signalled

    @classmethod
    def forward_to_workers(cls, sweep_dir: Path) -> None:
        cls.caught, cls.told = [], set()

        def handler(signum: int, frame: Any) -> None:
            first = not cls.caught
            cls.caught.append(signum)
            if first:
                threading.Thread(target=cls._tell_workers, args=(sweep_dir,), daemon=True,
                                 name="stop-workers").start()

        for s in STOP_SIGNALS:
            signal.signal(s, handler)

    @classmethod
    def _tell_workers(cls, sweep_dir: Path) -> None:
        """Until the process ends: signal each worker once per run whose lock it holds."""
        while True:
            workers = {p.pid for p in multiprocessing.active_children()}
            for run_dir in sweep_dir.iterdir() if sweep_dir.is_dir() else ():
                pid = holder_pid(run_dir)
                if pid in workers and (pid, run_dir.name) not in cls.told:
                    cls.told.add((pid, run_dir.name))
                    try:
                        os.kill(pid, cls.caught[0])
                    except ProcessLookupError:
                        pass
            threading.Event().wait(POLL_SECONDS)

    @classmethod
    def check(cls) -> None:
        """After the launcher returns: SweepStopped if a stop signal came."""
        if cls.caught:
            raise SweepStopped(cls.caught[0], len(cls.told))


class Worker:
    """A worker process's side: once told to stop, it starts no further run."""

    listening = False
    signum: Optional[int] = None

    @classmethod
    def told_to_stop(cls) -> bool:
        """Call before each run. The first call makes stop signals set the flag in this process
        (a run's own handler, `train.Preemption`, sits on top while it trains and hands the
        signal on to this one when its files are written)."""
        if not cls.listening:
            def handler(signum: int, frame: Any) -> None:
                cls.signum = signum

            for s in STOP_SIGNALS:
                if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler):
                    signal.signal(s, handler)
            cls.listening = True
        return cls.signum is not None

"""One writer per run directory: a `.lock` file made with O_EXCL and kept fresh by a heartbeat.

The lock names its holder (host, pid and, under SLURM, the job). While the run trains, a
background thread touches the file every HEARTBEAT_SECONDS. Another process takes a lock
over when it is stale: not refreshed for EXPIRY_SECONDS (whatever host wrote it: a node that
died, a container gone, a pid reused), its process gone (same host), or written by an earlier
attempt of the same SLURM job (a requeue). A live lock makes a second invocation skip the run.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 5.0
EXPIRY_SECONDS = 60.0  # twelve missed heartbeats: the holder is gone, or stopped, or cut off


def slurm_job() -> str:
    """This process's SLURM job (array jobs: job_task), or "-" outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "-")


def _identity() -> str:
    return f"{socket.gethostname()} {os.getpid()} {slurm_job()}\n"


def _read(path: Path) -> Optional[tuple[str, float]]:
    """The lock's text and its age in seconds, or None if there is no lock."""
    try:
        return path.read_text(), time.time() - path.stat().st_mtime
    except OSError:
        return None


def _holder(text: str) -> Optional[tuple[str, int, str]]:
    """(host, pid, SLURM job) from a lock's text; None while it is being written or garbage."""
    try:
        host, pid, *job = text.split()
        return host, int(pid), job[0] if job else "-"
    except ValueError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(text: str, age: float) -> Optional[str]:
    """Why the lock may be taken over, or None while its holder may be alive."""
    if age > EXPIRY_SECONDS:
        return f"not refreshed for {age:.0f} s (expiry {EXPIRY_SECONDS:.0f} s)"
    holder = _holder(text)
    if holder is None:
        return None  # being written right now
    host, pid, job = holder
    if host == socket.gethostname() and not _pid_alive(pid):
        return "its process is gone"
    if job != "-" and job == slurm_job():
        return f"an earlier attempt of this SLURM job ({job})"
    return None


def is_held(run_dir: Path) -> bool:
    """True while a live process holds the run dir's lock (how a report tells a run still
    going from one that was killed)."""
    lock = _read(run_dir / LOCK_FILE)
    return lock is not None and stale_reason(*lock) is None


class _Heartbeat(threading.Thread):
    """Touches the lock file while it is ours; stops touching it if another process took it."""

    def __init__(self, path: Path, me: str) -> None:
        super().__init__(daemon=True, name="lock-heartbeat")
        self.path, self.me, self.stop = path, me, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                if self.path.read_text() != self.me:
                    return
                os.utime(self.path)
            except OSError:
                return


def _take_over(path: Path, seen: str) -> bool:
    """Move a stale lock aside; False if what was moved was not the lock judged stale (another
    process took it over first), which is then put back."""
    aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return True  # someone removed it: try to create ours
    try:
        if aside.read_text() == seen:
            return True
        os.link(aside, path)  # a fresh lock of another process: restore it
        return False
    except OSError:
        return False
    finally:
        aside.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Optional[str]]:
    """Yields None when this process holds the lock, else a line saying who does."""
    path = run_dir / LOCK_FILE
    me = _identity()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            lock = _read(path)
            if lock is None:
                continue  # released meanwhile: try again
            text, age = lock
            reason = stale_reason(text, age)
            if reason is None:
                host, pid, job = _holder(text) or ("?", "?", "-")
                yield f"locked by pid {pid} on {host}" + (f" (SLURM job {job})" if job != "-" else "")
                return
            print(f"taking over the lock of {run_dir} ({text.strip() or 'empty'}): {reason}",
                  flush=True)
            if not _take_over(path, text):
                break
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        heartbeat = _Heartbeat(path, me)
        heartbeat.start()
        try:
            yield None
        finally:
            heartbeat.stop.set()
            heartbeat.join()
            try:
                if path.read_text() == me:
                    path.unlink()
            except OSError:
                pass
        return
    yield "lock contended by another process"

"""One writer per run directory: a `.lock` file made with O_EXCL and kept fresh by a heartbeat.

The lock names its holder (host, pid and, under SLURM, the job). While the run trains, a
background thread touches the file every HEARTBEAT_SECONDS. Another process takes a lock
over when it is stale: not refreshed for EXPIRY_SECONDS (whatever host wrote it: a node that
died, a container gone, a pid reused), its process gone (same host), or written by an earlier
attempt of the same SLURM job (a requeue). A live lock makes a second invocation skip the run.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Seen:
    """What stands at a lock's path: its text (the holder's line, or "" if it is not a regular
    file), its age in seconds, its kind, and an identity to tell it from a later lock."""

    text: str
    age: float
    kind: str = "file"
    ident: tuple[int, int] = (0, 0)


KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFLNK: "a symbolic link",
         stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def _look(path: Path) -> Optional[Seen]:
    """The lock at `path`, or None if there is none. Never follows a link and never blocks (a
    FIFO is not opened); a file that is not text reads as garbage, not as an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return Seen("", math.inf, f"unreadable ({err.strerror})")
    age, ident = time.time() - st.st_mtime, (st.st_ino, st.st_mtime_ns)
    if not stat.S_ISREG(st.st_mode):
        return Seen("", age, KINDS.get(stat.S_IFMT(st.st_mode), "not a file"), ident)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        return Seen("", age, f"unreadable ({err.strerror})", ident)
    try:
        data = os.read(fd, 512)
    except OSError as err:
        return Seen("", age, f"unreadable ({err.strerror})", ident)
    finally:
        os.close(fd)
    return Seen(data.decode(errors="replace"), age, "file", ident)


MAX_PID = 2**22  # Linux's largest pid_max: a larger, zero or negative pid is not a process


def _holder(text: str) -> Optional[tuple[str, int, str]]:
    """(host, pid, SLURM job) from a lock's text; None while it is being written or garbage."""
    try:
        host, pid, *job = text.split()
        number = int(pid)
    except ValueError:
        return None
    if not 0 < number <= MAX_PID:
        return None
    return host, number, job[0] if job else "-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(seen: Seen) -> Optional[str]:
    """Why the lock may be taken over, or None while its holder may be alive."""
    if seen.age > EXPIRY_SECONDS:
        return f"not refreshed for {seen.age:.0f} s (expiry {EXPIRY_SECONDS:.0f} s)"
    holder = _holder(seen.text)
    if seen.kind != "file" or holder is None:
        return None  # being written right now, or not ours to judge before it expires
    host, pid, job = holder
    if host == socket.gethostname() and not _pid_alive(pid):
        return "its process is gone"
    if job != "-" and job == slurm_job():
        return f"an earlier attempt of this SLURM job ({job})"
    return None


def is_held(run_dir: Path) -> bool:
    """True while a live process holds the run dir's lock (how a report tells a run still
    going from one that was killed)."""
    seen = _look(run_dir / LOCK_FILE)
    return seen is not None and stale_reason(seen) is None


def holder_pid(run_dir: Path) -> Optional[int]:
    """The pid holding the run dir's lock on this host, or None."""
    seen = _look(run_dir / LOCK_FILE)
    holder = _holder(seen.text) if seen is not None and seen.kind == "file" else None
    return holder[1] if holder and holder[0] == socket.gethostname() else None


def _held_by(seen: Seen) -> str:
    if seen.kind != "file":
        return (f"{LOCK_FILE} is {seen.kind}, not a lock file: it is taken over once "
                f"{EXPIRY_SECONDS:.0f} s old")
    host, pid, job = _holder(seen.text) or ("?", "?", "-")
    return f"locked by pid {pid} on {host}" + (f" (SLURM job {job})" if job != "-" else "")


class _Heartbeat(threading.Thread):
    """Touches the lock file while it is ours; stops touching it if another process took it."""

    def __init__(self, path: Path, me: str) -> None:
        super().__init__(daemon=True, name="lock-heartbeat")
        self.path, self.me, self.stop = path, me, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            seen = _look(self.path)
            if seen is None or seen.text != self.me:
                return
            try:
                os.utime(self.path, follow_symlinks=False)
            except OSError:
                return


def _take_over(path: Path, seen: Seen) -> bool:
    """Move a stale lock aside; False if what was moved was not the lock judged stale (another
    process took it over first), which is then put back. A stale lock that is not a regular
    file (someone's folder or FIFO) is left beside, renamed, not deleted."""
    aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return True  # someone removed it: try to create ours
    except OSError:
        return False
    moved = _look(aside)
    if moved is not None and (moved.ident, moved.text) == (seen.ident, seen.text):
        if moved.kind == "file":
            aside.unlink(missing_ok=True)
        return True
    try:
        os.link(aside, path, follow_symlinks=False)  # a fresh lock of another process: restore it
    except OSError:
        pass
    if moved is not None and moved.kind == "file":
        aside.unlink(missing_ok=True)
    return False


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Optional[str]]:
    """Yields None when this process holds the lock, else a line saying who does."""
    path = run_dir / LOCK_FILE
    me = _identity()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _look(path)
            if seen is None:
                continue  # released meanwhile: try again
            reason = stale_reason(seen)
            if reason is None:
                yield _held_by(seen)
                return
            what = ((seen.text.strip()[:80] or "empty") if seen.kind == "file" else
                    f"{seen.kind}, moved aside to {LOCK_FILE}.stale-{os.getpid()}")
            print(f"taking over the lock of {run_dir} ({what}): {reason}", flush=True)
            if not _take_over(path, seen):
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
            seen = _look(path)
            if seen is not None and seen.text == me:
                path.unlink(missing_ok=True)
        return
    yield "lock contended by another process"

"""One writer per run directory: a `.lock` file holding "host pid", made with O_EXCL.

Released on exit; a lock whose process is gone (same host, pid not alive) is stale and taken
over. A second invocation that finds a live lock skips the run.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

LOCK_FILE = ".lock"
FRESH_SECONDS = 10  # an empty lock younger than this is being written, not abandoned


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return FRESH_SECONDS


def _holder(path: Path) -> Optional[tuple[str, int]]:
    try:
        host, pid = path.read_text().split()[:2]
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell for another machine: respect its lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_held(run_dir: Path) -> bool:
    """True while a live process holds the run dir's lock (how a report tells a run still
    going from one that was killed)."""
    holder = _holder(run_dir / LOCK_FILE)
    return holder is not None and _alive(*holder)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Optional[str]]:
    """Yields None when this process holds the lock, else a line saying who does."""
    path = run_dir / LOCK_FILE
    me = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and _age(path) < FRESH_SECONDS:
                holder = ("another process", -1)  # being written right now
            if holder is not None and (holder[1] < 0 or _alive(*holder)):
                yield f"locked by pid {holder[1]} on {holder[0]}"
                return
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        try:
            yield None
        finally:
            if path.exists() and path.read_text() == me:
                path.unlink()
        return
    yield "lock contended by another process"

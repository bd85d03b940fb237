"""Checkpoints that survive a kill: atomic writes, safe loads, corrupt files moved aside."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import torch


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> Optional[dict]:
    """The checkpoint at `path`, or None if there is none. A corrupt one is renamed
    `<name>.corrupt-<time>` (never deleted) and reported, and None is returned."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        print(f"warning: checkpoint {path} is unreadable ({type(err).__name__}); "
              f"moved to {aside.name}, starting without it", flush=True)
        return None

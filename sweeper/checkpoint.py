"""Checkpoints that survive a kill: atomic writes, safe loads, corrupt files moved aside."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from sweeper.atomic import atomic_write


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save, written whole or not at all (see sweeper.atomic). Serialised in memory
    first: torch's own writer turns a full disk into "unexpected pos", a plain write into the
    OSError (ENOSPC) that the run reports in one line."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load(path: Path, version: int) -> Optional[dict]:
    """The checkpoint at `path`, or None if there is none. One that is corrupt, or of another
    format `version`, is renamed `<name>.corrupt-<time>` (never deleted) and reported, and
    None is returned."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != version:
            raise ValueError(f"format {state.get('version')}, not {version}")
        return state
    except Exception as err:
        set_aside(path, f"is unreadable ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else ''})")
        return None


def set_aside(path: Path, why: str) -> None:
    """Rename a checkpoint that cannot be resumed `<name>.corrupt-<time>` (never deleted), and
    say so in one line."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    print(f"warning: checkpoint {path} {why}; moved to {aside.name}, starting without it",
          flush=True)

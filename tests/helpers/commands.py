"""The real CLI as a user types it, on tiny synthetic data, and what its runs leave."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Small enough for a CPU test, large enough that every heads and cls_layer option fits.
TINY = [
    "data=synthetic",
    "data.n_train=60",
    "data.n_test=20",
    "epochs=1",
    "batch_size=32",
    "model.dim=120",
    "model.depth=2",
    "model.mlp_ratio=1",
]


def sweeper(*args: str, cwd: Path = ROOT, env: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m sweeper ARGS` as a user types it; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding metrics.csv) below root, sorted."""
    return sorted(p.parent for p in root.rglob("metrics.csv"))


# Long enough (about a second per epoch) to be interrupted mid-run.
SLOW = [a for a in TINY if not a.startswith(("data.n_train", "epochs", "model.dim"))] + [
    "data.n_train=1000", "epochs=3", "model.dim=48", "checkpoint_every=0"]
SCORES = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]


def scores(run_dir: Path) -> list[list[str]]:
    return [[r[k] for k in SCORES] for r in metrics(run_dir)]


def start_and_signal(run_dir: Path, sig: int, extra: tuple = ()) -> subprocess.Popen:
    """Start a slow run and send it `sig` once its first checkpoint is on disk (a checkpoint
    is renamed into place whole, so existing means complete)."""
    proc = subprocess.Popen([sys.executable, "-m", "sweeper", *SLOW, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        if time.time() > deadline or proc.poll() is not None:
            raise AssertionError(f"no checkpoint written: exit {proc.poll()}")
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc

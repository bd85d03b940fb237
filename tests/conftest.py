"""Helpers shared by the tests: run the real CLI on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


# Long enough (about a second per epoch) to be interrupted mid-run.
SLOW = [a for a in TINY if not a.startswith(("data.n_train", "epochs", "model.dim"))] + [
    "data.n_train=1000", "epochs=3", "model.dim=48", "checkpoint_every=0"]
SCORES = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]


def scores(run_dir: Path) -> list[list[str]]:
    return [[r[k] for k in SCORES] for r in metrics(run_dir)]


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> list[list[str]]:
    """The scores of SLOW run once without interruption: what every resumed run must match."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    return scores(run_dir)

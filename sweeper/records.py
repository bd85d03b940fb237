"""What a run leaves for readers: metrics.csv (a row per epoch), summary.json, the console line.

The run directory is the interface to `analysis`; these column and key names are stable.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sweeper.lock import LOCK_FILE

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
COLUMNS = [
    "phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "images_per_s",
]


def append_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row, flushed to disk before the epoch's checkpoint is written."""
    path = run_dir / METRICS_FILE
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv atomically (used to drop rows past a resumed checkpoint)."""
    path = run_dir / METRICS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in COLUMNS} for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    path = run_dir / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def console_line(row: dict[str, Any]) -> str:
    """The report's own format, so the two logs read side by side; other phases are named."""
    phase = "" if row["phase"] == "train" else f"[{row['phase']}] "
    return (
        f"{phase}Epoch: {row['epoch']} | train loss: {row['train_loss']:.4f} | "
        f"train acc: {row['train_acc']:.4f} | test loss: {row['test_loss']:.4f} | "
        f"test acc: {row['test_acc']:.4f}"
    )


def fail(message: str, run_dir: Path) -> None:
    """One line on stderr, exit code 2, and no output left behind by this run."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    ours = [p for p in run_dir.iterdir() if p.name not in (".hydra", LOCK_FILE)] if run_dir.is_dir() else []
    if run_dir.is_dir() and not ours:
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        if parent.name == "runs" and parent.is_dir() and not any(parent.iterdir()):
            os.rmdir(parent)
    raise SystemExit(2)


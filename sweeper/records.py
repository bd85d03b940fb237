"""What a run leaves for readers: metrics.csv (a row per epoch), summary.json, the console line.

The run directory is the interface to `analysis`; these column and key names are stable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

from sweeper.atomic import atomic_write_text
from sweeper.lock import LOCK_FILE

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
COLUMNS = [
    "phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "images_per_s",
]
VAL_COLUMNS = ["val_loss", "val_acc"]  # only in runs with a validation split (data.val_size)


def columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """metrics.csv's header for these rows: the validation columns when they hold values."""
    return COLUMNS + VAL_COLUMNS if any("val_acc" in r for r in rows) else COLUMNS


# The phase whose test figures are a run's result (rotation runs: the fine-tuned classifier).
RESULT_PHASES = ("finetune", "train")


def phase_results(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase, in logged order: epochs done and the final / best test figures. The one rule
    for a run's numbers, used by the run's summary.json and by the report alike."""
    phases: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        phases.setdefault(row["phase"], []).append(row)
    out = {}
    for name, mine in phases.items():
        accs = [float(r["test_acc"]) for r in mine]
        losses = [float(r["test_loss"]) for r in mine]
        out[name] = {
            "epochs_done": len(mine),
            "final_test_acc": accs[-1],
            "best_test_acc": max(accs),
            "final_test_loss": losses[-1],
            "best_test_loss": min(losses),
            "final_train_acc": float(mine[-1]["train_acc"]),
        }
        if "val_acc" in mine[-1]:
            vals = [float(r["val_acc"]) for r in mine]
            out[name].update(final_val_acc=vals[-1], best_val_acc=max(vals),
                             final_val_loss=float(mine[-1]["val_loss"]))
    return out


def run_results(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A run's headline figures: its result phase's, and the rotation pretext's test accuracy."""
    out: dict[str, Any] = {"epochs_done": sum(p["epochs_done"] for p in phases.values())}
    result = next((phases[p] for p in RESULT_PHASES if p in phases), None)
    if result is not None:
        out.update({k: v for k, v in result.items() if k != "epochs_done"})
    if "pretrain" in phases:
        out["rotation_test_acc"] = phases["pretrain"]["final_test_acc"]
    return out


def json_safe(value: Any) -> Any:
    """Non-finite floats become null: summary.json stays valid JSON whatever a run logged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def append_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row, flushed to disk before the epoch's checkpoint is written."""
    path = run_dir / METRICS_FILE
    new = not path.exists() or path.stat().st_size == 0
    fields = columns([row])
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in fields})
        f.flush()
        os.fsync(f.fileno())


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    """The complete rows of metrics.csv: a last line torn by a kill mid-write (no line end, or
    missing fields) is left out."""
    path = run_dir / METRICS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    reader = csv.DictReader(lines)
    need = columns([dict.fromkeys(reader.fieldnames or [])])
    return [r for r in reader if all(r.get(k) not in (None, "") for k in need)]


def write_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv whole (on resume: drops rows past the checkpoint and a torn line)."""
    fields = columns(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows({k: row[k] for k in fields} for row in rows)
    atomic_write_text(run_dir / METRICS_FILE, out.getvalue())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run_dir / SUMMARY_FILE,
                      json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")


class Board:
    """`logger=tensorboard`: each epoch's row also goes to TensorBoard event files in
    RUN_DIR/tensorboard (`tensorboard --logdir outputs/` follows a sweep live); metrics.csv
    stays the record."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        for key in COLUMNS[2:] + VAL_COLUMNS:
            if key in row:
                self.writer.add_scalar(f"{row['phase']}/{key}", row[key], int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def console_line(row: dict[str, Any]) -> str:
    """The report's own format, so the two logs read side by side; other phases are named."""
    phase = "" if row["phase"] == "train" else f"[{row['phase']}] "
    return (
        f"{phase}Epoch: {row['epoch']} | train loss: {row['train_loss']:.4f} | "
        f"train acc: {row['train_acc']:.4f} | test loss: {row['test_loss']:.4f} | "
        f"test acc: {row['test_acc']:.4f}"
        + (f" | val acc: {row['val_acc']:.4f}" if "val_acc" in row else "")
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


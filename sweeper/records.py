"""What a run leaves for readers: metrics.csv (a row per epoch), summary.json, the console line.

The run directory is the interface to `analysis`: this module names its files and holds their
strict readers; these file, column and key names are stable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Optional

from sweeper.atomic import atomic_write_text
from sweeper.errors import RunFileError
from sweeper.lock import LOCK_FILE

METRICS_FILE = "metrics.csv"
CONFIG_DIR, CONFIG_FILE = ".hydra", "config.yaml"  # the run's resolved config, as run_dir/.hydra/config.yaml
CHECKPOINT_FILE = "checkpoint.pt"
STUDY_CSV, STUDY_JSON = "study.csv", "study.json"  # a search's folder
VIT_SHAPE = ("patch", "heads", "overlap", "cls_layer")  # the top-level keys model=vit reads
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"  # the event files of logger=tensorboard
COLUMNS = [
    "phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
    "lr", "epoch_seconds", "images_per_s",
]
VAL_COLUMNS = ["val_loss", "val_acc"]  # only in runs with a validation split (data.val_size)
TTA_COLUMNS = ["tta_test_loss", "tta_test_acc"]  # only in runs with tta=flip or flip_translate
TRANSLATE_COLUMNS = ["tta_translate_test_loss", "tta_translate_test_acc"]  # tta=flip_translate


def columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """metrics.csv's header for these rows: the validation and TTA columns when they hold values
    (every row of a run has the same keys: a rotation pretext has TTA figures too)."""
    rows = list(rows)
    return (COLUMNS + (VAL_COLUMNS if any("val_acc" in r for r in rows) else [])
            + (TTA_COLUMNS if any("tta_test_acc" in r for r in rows) else [])
            + (TRANSLATE_COLUMNS if any("tta_translate_test_acc" in r for r in rows) else []))


class Status(str, Enum):
    """A run's `status` in summary.json; a str, so it is written and compared as its value."""

    RUNNING = "running"
    COMPLETE = "complete"
    PREEMPTED = "preempted"  # a signal stopped it at a step; the same command resumes it
    TIMEOUT = "timeout"  # pre-empted at a cluster's time limit and not requeued
    STOPPED = "stopped"  # `max_epochs` of this process reached (a budgeted stretch)
    DIVERGED = "diverged"
    PRUNED = "pruned"  # a search's pruner stopped it
    OOM = "oom"
    FAILED = "failed"  # an error outside training: a checkpoint that could not be written
    DAMAGED = "damaged"  # its metrics.csv has a line the writer could not have written
    UNKNOWN = "unknown"  # a summary.json without a status
    INTERRUPTED = "interrupted"  # the report's word for `running` with no live owner: killed

    __str__ = str.__str__  # f-strings and CSV cells show the value, not "Status.COMPLETE"


# A rerun leaves these alone: `complete` is done, a `diverged` run would diverge again, and a
# `pruned` one was stopped for good by its search.
FINISHED = (Status.COMPLETE, Status.DIVERGED, Status.PRUNED)


@dataclass(frozen=True)
class TaskSpec:
    """What a task's run directory holds: its phases in order, the one whose test figures are
    the run's result, and whether it trains the rotation pretext on A (reads pretrain_epochs)."""

    phases: tuple[str, ...]
    result: str
    pretext: bool
    part_a: bool  # one of the assignment's part A (ResNet-18, the A/B split)


_ROTATION = TaskSpec(("pretrain", "finetune"), "finetune", pretext=True, part_a=True)
TASKS = {
    "classify": TaskSpec(("train",), "train", pretext=False, part_a=False),
    "rotation_pretrain": _ROTATION,
    "rotation_probe": _ROTATION,  # the encoder frozen on B
    "finetune": TaskSpec(("finetune",), "finetune", pretext=False, part_a=True),
    "scratch": TaskSpec(("train",), "train", pretext=False, part_a=True),
}
PART_A = tuple(name for name, t in TASKS.items() if t.part_a)
PRETEXT_TASKS = tuple(name for name, t in TASKS.items() if t.pretext)
# The phases whose test figures are a run's result (rotation runs: the fine-tuned classifier).
RESULT_PHASES = tuple(dict.fromkeys(t.result for t in TASKS.values()))


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
            "best_test_acc": _best(max, accs),
            "final_test_loss": losses[-1],
            "best_test_loss": _best(min, losses),
            "final_train_acc": float(mine[-1]["train_acc"]),
        }
        if "val_acc" in mine[-1]:
            vals = [float(r["val_acc"]) for r in mine]
            out[name].update(final_val_acc=vals[-1], best_val_acc=_best(max, vals),
                             final_val_loss=float(mine[-1]["val_loss"]))
        if "tta_test_acc" in mine[-1]:
            tta = [float(r["tta_test_acc"]) for r in mine]
            out[name].update(final_tta_test_acc=tta[-1], best_tta_test_acc=_best(max, tta))
        if "tta_translate_test_acc" in mine[-1]:
            moved = [float(r["tta_translate_test_acc"]) for r in mine]
            out[name].update(final_tta_translate_test_acc=moved[-1],
                             best_tta_translate_test_acc=_best(max, moved))
    return out


def _best(pick: Any, values: list[float]) -> float:
    """The best of the numbers a diverged run left among its nan/inf, or nan if none is."""
    return pick((v for v in values if math.isfinite(v)), default=math.nan)


def result_phase(phases: Iterable[str], named: Optional[str] = None) -> Optional[str]:
    """The phase whose test figures are the run's result: the one its task names (summary.json's
    result_phase), else a shipped task's (older runs), else the last one logged."""
    phases = list(phases)
    if named in phases:
        return named
    return next((p for p in RESULT_PHASES if p in phases), phases[-1] if phases else None)


def run_results(phases: dict[str, dict[str, Any]], named: Optional[str] = None) -> dict[str, Any]:
    """A run's headline figures: its result phase's, and the rotation pretext's test accuracy."""
    out: dict[str, Any] = {"epochs_done": sum(p["epochs_done"] for p in phases.values())}
    result = result_phase(phases, named)
    if result is not None:
        out.update({k: v for k, v in phases[result].items() if k != "epochs_done"})
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


# Older runs wrote fewer columns; these are what every metrics.csv has had.
REQUIRED = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], Optional[RunFileError]]:
    """metrics.csv read strictly: per phase (each phase one block), epochs 1..n in order, every
    field but `phase` a number; "nan" and "inf" are numbers (a diverged run), not damage. A last
    line torn by a kill mid-write (no line end) is left out. Returns the rows before the first
    line the writer could not have written, and that line's error (None when there is none)."""
    path = run_dir / METRICS_FILE
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return [], None
    except UnicodeDecodeError:
        return [], RunFileError(f"{METRICS_FILE} is not text")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    if not lines:
        return [], None
    try:
        return _parse(lines)
    except csv.Error as err:
        return [], RunFileError(f"{METRICS_FILE} is not a CSV file ({err})")


def _parse(lines: list[str]) -> tuple[list[dict[str, Any]], Optional[RunFileError]]:
    header = next(csv.reader(lines[:1]))
    known = set(COLUMNS + VAL_COLUMNS + TTA_COLUMNS + TRANSLATE_COLUMNS)
    if header[: len(REQUIRED)] != REQUIRED or len(set(header)) < len(header) or not known >= set(header):
        return [], RunFileError(f"{METRICS_FILE} line 1: not its header ({','.join(header)[:80]})")
    rows: list[dict[str, Any]] = []
    done: set[str] = set()
    for number, fields in enumerate(csv.reader(lines[1:]), start=2):
        problem = _row_problem(fields, header, rows, done)
        if problem:
            return rows, RunFileError(f"{METRICS_FILE} line {number}: {problem}")
        row: dict[str, Any] = {"phase": fields[0], "epoch": int(fields[1])}
        row.update((k, float(v)) for k, v in zip(header[2:], fields[2:]))
        if rows and rows[-1]["phase"] != row["phase"]:
            done.add(rows[-1]["phase"])
        rows.append(row)
    return rows, None


NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|nan|-?inf")  # as Python writes floats
EPOCH = re.compile(r"[1-9]\d*")


def _row_problem(fields: list[str], header: list[str], rows: list[dict[str, Any]],
                 done: set[str]) -> Optional[str]:
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)}"
    phase, epoch = fields[0], fields[1]
    if not phase or phase in done:
        return f"phase {phase!r} out of place"
    if not EPOCH.fullmatch(epoch) or not all(NUMBER.fullmatch(v) for v in fields[2:]):
        return "a field that is not a number"
    last = rows[-1]["epoch"] if rows and rows[-1]["phase"] == phase else 0
    if int(epoch) != last + 1:
        return f"epoch {epoch} of phase {phase!r} where epoch {last + 1} comes next"
    return None


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of metrics.csv, or RunFileError naming the first line the writer could not
    have written."""
    rows, error = read_metrics(run_dir)
    if error is not None:
        raise error
    return rows


def write_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv whole (on resume: drops rows past the checkpoint and a torn line).
    With no rows left the file is emptied, header included: the next row writes the header
    its own columns need (a run with a validation split has two more)."""
    if not rows:
        atomic_write_text(run_dir / METRICS_FILE, "")
        return
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
    stays the record. A row's step is its line in metrics.csv (phases follow one another, so a
    rotation run's fine-tuning starts after its pretext); a resumed run purges the events past
    its checkpoint, and a complete run writes its settings and results to the HParams tab."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.writer, self.step = run_dir, None, 0

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is None:  # the first row of this process: steps from here on are new
            from torch.utils.tensorboard import SummaryWriter

            self.step = len(read_rows(self.run_dir))  # `row` is appended already
            self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR),
                                        purge_step=self.step)
        else:
            self.step += 1
        for key in COLUMNS[2:] + VAL_COLUMNS + TTA_COLUMNS + TRANSLATE_COLUMNS:
            if key in row:
                self.writer.add_scalar(f"{row['phase']}/{key}", row[key], self.step)
        self.writer.flush()

    def close(self, settings: Optional[dict[str, Any]] = None,
              results: Optional[dict[str, Any]] = None) -> None:
        """With `settings` (the flat config) and `results` (summary.json's): the HParams entry."""
        if self.writer is None:
            return
        if settings is not None and results is not None:
            hparams = {k: v for k, v in settings.items() if isinstance(v, (bool, int, float, str))}
            metrics = {f"hparam/{k}": float(v) for k, v in results.items()
                       if k in HPARAM_METRICS and isinstance(v, (int, float))}
            self.writer.add_hparams(hparams, metrics, run_name=".", global_step=self.step)
        self.writer.close()


HPARAM_METRICS = ("final_test_acc", "best_test_acc", "final_tta_test_acc",
                  "final_tta_translate_test_acc", "final_test_loss",
                  "final_val_acc", "final_val_loss", "rotation_test_acc", "wall_seconds")


def console_line(row: dict[str, Any]) -> str:
    """The report's own format, so the two logs read side by side; other phases are named."""
    phase = "" if row["phase"] == "train" else f"[{row['phase']}] "
    return (
        f"{phase}Epoch: {row['epoch']} | train loss: {row['train_loss']:.4f} | "
        f"train acc: {row['train_acc']:.4f} | test loss: {row['test_loss']:.4f} | "
        f"test acc: {row['test_acc']:.4f}"
        + (f" | val acc: {row['val_acc']:.4f}" if "val_acc" in row else "")
        + (f" | flip TTA test acc: {row['tta_test_acc']:.4f}" if "tta_test_acc" in row else "")
        + (f" | flip + translate TTA test acc: {row['tta_translate_test_acc']:.4f}"
           if "tta_translate_test_acc" in row else "")
    )


def discard(run_dir: Path, holding_lock: bool = False) -> None:
    """Leave no output behind a run that failed before it trained. Only the holder of the run's
    lock removes the config it wrote; any other process removes the directory only when it is
    empty (Hydra made it for this process): a run of the same command that is loading its data
    beside this one keeps its folder, config and lock."""
    mine = (CONFIG_DIR, LOCK_FILE) if holding_lock else ()
    ours = [p for p in run_dir.iterdir() if p.name not in mine] if run_dir.is_dir() else []
    if run_dir.is_dir() and not ours:
        shutil.rmtree(run_dir, ignore_errors=True)
        _remove_empty_parents(run_dir.parent)


def _remove_empty_parents(folder: Path) -> None:
    """Hydra makes the run folder's parents too (outputs/runs/): those that are left empty go,
    up to the working directory; a folder outside it, or one holding anything, stays."""
    cwd, folder = Path.cwd().resolve(), folder.resolve()
    while cwd in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        try:
            folder.rmdir()
        except OSError:  # another run wrote into it meanwhile
            return
        folder = folder.parent


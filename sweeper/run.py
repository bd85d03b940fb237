"""One run, top to bottom: validate -> data on the device -> task phases -> train -> records."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sweeper import records
from sweeper.config import ConfigError, Settings
from sweeper.data import sources
from sweeper.lock import LOCK_FILE, run_lock
from sweeper.records import fail
from sweeper.tasks import Phase, build_phases
from sweeper.train import Outcome, Trainer, resolve_precision


# A rerun leaves these alone: `complete` is done, and a `diverged` run would diverge again.
FINISHED = ("complete", "diverged")


def run(s: Settings, run_dir: Path) -> float:
    """Train one validated configuration in Hydra's output dir; returns the final test accuracy."""
    summary = execute(s, run_dir)
    if summary.get("status") == "preempted":
        print("pre-empted: rerun the same command to resume", flush=True)
        raise SystemExit(0)  # stop the whole sweep here: the signal was meant for this process
    return summary.get("final_test_acc") or 0.0


def execute(s: Settings, run_dir: Path, max_epochs: int | None = None) -> dict[str, Any]:
    """Holding the run dir's lock: load, train and record one run."""
    try:
        device = pick_device(s.device)
    except ConfigError as err:
        fail(str(err), run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) as held_by:
        if held_by:
            print(f"run dir: {run_dir} | {held_by}: skipped", flush=True)
            return read_summary(run_dir)
        if not s.resume:
            move_aside(run_dir)
        previous = read_summary(run_dir)
        if previous.get("status") in FINISHED:
            print(f"run dir: {run_dir} | already {previous['status']}: skipped", flush=True)
            return previous
        try:
            return _train(s, device, run_dir, previous, max_epochs)
        except OSError as err:  # disk full, unwritable dir: what was written stays valid
            where = err.filename or run_dir
            print(f"error: cannot write {where}: {err.strerror or err}", file=sys.stderr, flush=True)
            raise SystemExit(1) from err


def _train(s: Settings, device: torch.device, run_dir: Path, previous: dict[str, Any],
           max_epochs: int | None) -> dict[str, Any]:
    started = time.time()
    try:
        images = sources.load(s.data)
        torch.manual_seed(s.seed)
        generator = torch.Generator(device).manual_seed(s.seed)
        on_device = sources.ImageSet(
            *(t.to(device) for t in (images.x_train, images.y_train, images.x_test, images.y_test)),
            classes=images.classes,
        )
        phases = build_phases(s, on_device, generator)
    except (ConfigError, sources.DataError) as err:
        fail(str(err), run_dir)
    base = {
        "task": s.task.name,
        "model": s.model.name,
        "data": s.data.name,
        "seed": s.seed,
        "params": count_params(phases),
        "device": describe(device),
        "precision": resolve_precision(device, s.precision),
        "torch": torch.__version__,
        **{k: v for p in phases for k, v in p.meta.items()},
    }
    prior_seconds = float(previous.get("wall_seconds", 0.0))
    print(f"run dir: {run_dir} | device: {base['device']} | {base['precision']} | "
          f"parameters: {base['params']:,}",
          flush=True)

    def log(row: dict[str, Any]) -> None:
        print(records.console_line(row), flush=True)
        summarise(run_dir, base, "running", prior_seconds + time.time() - started)

    summarise(run_dir, base, "running", prior_seconds)
    outcome: Outcome = Trainer(s, device, run_dir, log, max_epochs).fit(phases)
    summary = summarise(run_dir, base, outcome.status, prior_seconds + time.time() - started,
                        outcome.detail)
    if outcome.status != "complete":
        print(f"run {outcome.status}: {outcome.detail}", flush=True)
    return summary


def move_aside(run_dir: Path) -> None:
    """`resume=false`: the run's earlier files go to .previous/<time>/, never deleted."""
    keep = {".hydra", LOCK_FILE, ".previous"}
    old = [p for p in run_dir.iterdir() if p.name not in keep]
    if old:
        aside = run_dir / ".previous" / time.strftime("%Y%m%d-%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        for path in old:
            os.replace(path, aside / path.name)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is visible (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def count_params(phases: list[Phase]) -> int:
    """Parameters of the final model (the encoder plus the head that is evaluated)."""
    return sum(p.numel() for p in phases[-1].model.parameters())


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / records.SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def summarise(run_dir: Path, base: dict[str, Any], status: str, seconds: float,
              detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json from metrics.csv: per phase, and the last phase's figures on top."""
    rows = records.read_rows(run_dir)
    phases: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["phase"] for r in rows):
        mine = [r for r in rows if r["phase"] == name]
        accs = [float(r["test_acc"]) for r in mine]
        phases[name] = {
            "epochs_done": len(mine),
            "final_test_acc": accs[-1],
            "best_test_acc": max(accs),
            "final_test_loss": float(mine[-1]["test_loss"]),
            "final_train_acc": float(mine[-1]["train_acc"]),
        }
    summary = {"status": status, **base, "epochs_done": len(rows), "wall_seconds": round(seconds, 2)}
    if phases:
        summary.update({k: v for k, v in list(phases.values())[-1].items() if k != "epochs_done"})
    if "pretrain" in phases:
        summary["rotation_test_acc"] = phases["pretrain"]["final_test_acc"]
    summary["phases"] = phases
    if detail:
        summary["detail"] = detail
    records.write_summary(run_dir, summary)
    return summary

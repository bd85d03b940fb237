"""An outputs tree -> pandas frames: one row per run, one row per run and epoch.

It reads what runs leave behind (`.hydra/config.yaml`, `metrics.csv`, `summary.json`, the
`.lock` of a live run, through `sweeper.lock`, which has no torch in it) and never imports the
trainer, so any run, old or new, can be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sweeper.lock import is_held
from sweeper.records import (
    CONFIG_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TASKS, VIT_SHAPE, Status, phase_results,
    read_metrics, result_phase, run_results,
)
from sweeper.rundir import ADDED, NOT_RESULTS, TARGET, load_config_file

METRIC_COLUMNS = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
# Keys that name where or how a run ran, not what it measured: never a "setting".
NOT_SETTINGS = {"device", "compile", "eval_batch_size", "data.root", "data.cache_dir", "task.name",
                "resume", "checkpoint_every", "logger"}


# metrics.csv's `lr` is the learning rate of an epoch's last step; in the frames it is named so,
# apart from the `lr` setting that a sweep over lr puts beside it.
EPOCH_RENAMES = {"lr": "lr_last_step"}


@dataclass
class Collection:
    runs: pd.DataFrame  # one row per run: every config key (typed), then the results
    epochs: pd.DataFrame  # one row per run and logged epoch
    settings: list[str]  # config keys whose values differ between the runs (seed excluded)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> flat config
    problems: list[str] = field(default_factory=list)  # runs skipped, and why


def find_run_dirs(root: Path) -> list[Path]:
    """Directories holding a run's files, at any depth (single runs and multiruns alike)."""
    found = set()
    for name in (METRICS_FILE, SUMMARY_FILE, f"{CONFIG_DIR}/{CONFIG_FILE}"):
        for path in root.rglob(name):
            found.add(path.parent.parent if name.startswith(CONFIG_DIR) else path.parent)
    # Hidden folders hold what is not a run of its own (.hydra, .previous/ of resume=false).
    return sorted(d for d in found if not any(p.startswith(".") for p in d.relative_to(root).parts))


def _flat_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config, flat; raises ValueError when it is missing or unreadable.
    Runs of older versions kept the ViT's shape under model.* too: what trained is model.*."""
    path = run_dir / CONFIG_DIR / CONFIG_FILE
    if not path.exists():
        raise ValueError("no .hydra/config.yaml, so its settings are unknown")
    config = {**ADDED, **load_config_file(path)}  # keys added since: older runs trained at their neutral value
    for key in VIT_SHAPE:
        if f"model.{key}" in config:
            config[key] = config.pop(f"model.{key}")
    return config


def _summary(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """summary.json, and a problem line when it exists but is damaged."""
    path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError):
        return {}, "summary.json is damaged (not JSON): status unknown"
    if not isinstance(summary, dict):
        return {}, "summary.json is damaged (not an object): status unknown"
    return summary, None


def _status(run_dir: Path, summary: dict[str, Any], damaged: bool) -> str:
    status = summary.get("status", Status.DAMAGED if damaged else Status.UNKNOWN)
    if status == Status.RUNNING and not is_held(run_dir):
        return Status.INTERRUPTED  # killed, or crashed, without a chance to say so
    return str(status)


def _metrics(run_dir: Path) -> pd.DataFrame:
    """The run's epochs, read as the trainer reads them on resume; raises ValueError naming the
    line when the file is damaged (a repeated, out-of-order or non-numeric row): such a run
    never enters a mean. A diverged run's nan is a value, not damage."""
    if not (run_dir / METRICS_FILE).exists():
        raise ValueError(f"no {METRICS_FILE}")
    rows, error = read_metrics(run_dir)
    if error is not None:
        raise ValueError(str(error))
    if not rows:
        raise ValueError(f"{METRICS_FILE} has no epochs")
    return pd.DataFrame(rows).rename(columns=EPOCH_RENAMES)


def planned_epochs(config: dict[str, Any], summary: dict[str, Any]) -> Any:
    """Epochs the run was set to train (older runs did not record it: read their config)."""
    if "epochs_planned" in summary:
        return summary["epochs_planned"]
    task = TASKS.get(config.get("task.name"))
    if task is None or not task.part_a:
        return config.get("epochs")
    if task.pretext:  # older runs: budgets under task.
        pretext = config.get("pretrain_epochs", config.get("task.pretrain_epochs", 0))
        return pretext + config.get("task.finetune_epochs", config.get("epochs", 0))
    return config.get("task.finetune_epochs", config.get("epochs"))


def collect(root: Path, exclude: set[Path] = frozenset()) -> Collection:
    """Every run under `root` but those in `exclude` (resolved paths: a study's trials)."""
    rows, epochs, problems, configs = [], [], [], {}
    for run_dir in find_run_dirs(root):
        if run_dir.resolve() in exclude:
            continue
        name = str(run_dir.relative_to(root)) if run_dir != root else "."
        summary, damage = _summary(run_dir)
        try:
            config = _flat_config(run_dir)
            try:
                frame = _metrics(run_dir)
            except ValueError:
                if summary and not (run_dir / METRICS_FILE).exists():
                    frame = pd.DataFrame(columns=METRIC_COLUMNS)  # started, no epoch logged yet
                else:
                    raise
        except ValueError as err:
            problems.append(f"{name}: {err}; skipped")
            continue
        if damage:
            problems.append(f"{name}: {damage}")
        configs[name] = config
        logged = frame.to_dict("records")
        row = {
            "run": name,
            "task": summary.get("task") or config.get("task.name", "unknown"),
            "status": _status(run_dir, summary, damage is not None),
            "seed": config.get("seed", summary.get("seed", 0)),
            **run_results(phase_results(logged), summary.get("result_phase")),
            "result_phase": result_phase(frame["phase"].unique() if len(frame) else [],
                                         summary.get("result_phase")),
            "epochs_planned": planned_epochs(config, summary),
            "wall_seconds": summary.get("wall_seconds", frame.get("epoch_seconds", pd.Series()).sum()),
        }
        rows.append(row)
        if len(frame):
            epochs.append(frame.assign(run=name))
    for twin, kept in _twins(rows, configs).items():
        problems.append(f"{twin}: the same config and seed as {kept}: counted once, as {kept}")
        del configs[twin]
    rows = [r for r in rows if r["run"] in configs]
    epochs = [e for e in epochs if e["run"].iloc[0] in configs]
    settings = _varying(configs)
    runs = pd.DataFrame(rows)
    if len(runs):
        keys = [k for k in dict.fromkeys(k for c in configs.values() for k in c)
                if k not in runs.columns]
        typed = {k: typed_column([configs[r].get(k) for r in runs["run"]]) for k in keys}
        results = runs.drop(columns=["run", "task", "status", "seed"])
        runs = pd.concat([runs[["run", "task", "status", "seed"]],
                          pd.DataFrame(typed, index=runs.index), results], axis=1)
    epoch_frame = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()
    if len(epoch_frame):
        joined = ["task", "status", "seed", *settings]
        epoch_frame = epoch_frame.merge(runs[["run", *joined]], on="run")
    return Collection(runs, epoch_frame, settings, configs, problems)


def typed_column(values: list[Any]) -> pd.Series:
    """A setting's values as the column a notebook wants: integers as nullable integers (4, never
    4.0), floats, booleans, and text (or text mixed with numbers: cls_layer first/5/last) as a
    category; a run that lacks the key has <NA>."""
    if any(isinstance(v, (list, dict)) for v in values):
        return pd.Series([json.dumps(v, default=str) if v is not None else None for v in values],
                         dtype="string")
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pd.Series(values, dtype="boolean")
    if kinds == {int}:
        return pd.Series(values, dtype="Int64")
    if kinds and kinds <= {int, float}:
        return pd.Series(values, dtype="Float64")
    return pd.Series([None if v is None else str(v) for v in values], dtype="category")


def _twins(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Runs that repeat another's resolved config and seed (the same command run under
    outputs/runs and outputs/multirun): twin -> the run kept, the furthest along."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        config = {k: v for k, v in configs[row["run"]].items() if k not in NOT_RESULTS}
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), []).append(row)
    twins = {}
    for group in groups.values():
        kept, *rest = sorted(group, key=lambda r: (-(r.get("epochs_done") or 0),
                                                   r["status"] != Status.COMPLETE, r["run"]))
        twins.update((r["run"], kept["run"]) for r in rest)
    return twins


def _varying(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between runs, in config order; seed is not a setting."""
    keys: dict[str, None] = {}
    for config in configs.values():
        keys.update(dict.fromkeys(config))
    varying = []
    for key in keys:
        if key in NOT_SETTINGS or key == "seed" or key.endswith(TARGET):
            continue
        values = {json.dumps(c.get(key), sort_keys=True, default=str) for c in configs.values()}
        if len(values) > 1:
            varying.append(key)
    return varying

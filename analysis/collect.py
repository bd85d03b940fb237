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
from omegaconf import OmegaConf

from sweeper.lock import is_held

METRIC_COLUMNS = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
# Keys that name where or how a run ran, not what it measured, or that repeat another key
# (model.patch is the top-level patch): never a "setting".
NOT_SETTINGS = {"device", "compile", "eval_batch_size", "data.root", "data.cache_dir", "task.name",
                "model.patch", "model.heads", "model.overlap", "model.cls_layer"}
# The phase whose test figures are a run's result (rotation runs: the fine-tuned classifier).
RESULT_PHASES = ("finetune", "train")


@dataclass
class Collection:
    runs: pd.DataFrame  # one row per run
    epochs: pd.DataFrame  # one row per run and logged epoch
    settings: list[str]  # config keys whose values differ between the runs (seed excluded)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> flat config
    problems: list[str] = field(default_factory=list)  # runs skipped, and why


def find_run_dirs(root: Path, skip: Path | None = None) -> list[Path]:
    """Directories holding a run's files, at any depth (single runs and multiruns alike)."""
    found = set()
    for name in ("metrics.csv", "summary.json", ".hydra/config.yaml"):
        for path in root.rglob(name):
            found.add(path.parent.parent if name.startswith(".hydra") else path.parent)
    # Hidden folders hold what is not a run of its own (.hydra, .previous/ of resume=false).
    found = {d for d in found if not any(p.startswith(".") for p in d.relative_to(root).parts)}
    if skip is not None:
        skip = skip.resolve()
        found = {d for d in found if d.resolve() != skip and skip not in d.resolve().parents}
    return sorted(found)


def _flat_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)

    def flatten(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                out.update(flatten(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: node}

    return flatten(cfg, "")


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _status(run_dir: Path, summary: dict[str, Any]) -> str:
    status = summary.get("status", "unknown")
    if status == "running" and not is_held(run_dir):
        return "interrupted"  # killed, or crashed, without a chance to say so
    return status


def _metrics(run_dir: Path) -> pd.DataFrame:
    """The run's epochs; raises ValueError with the reason when the file is unusable."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        raise ValueError("no metrics.csv")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable metrics.csv ({type(err).__name__})") from err
    missing = [c for c in METRIC_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"metrics.csv lacks columns {missing}")
    if frame.empty:
        raise ValueError("metrics.csv has no epochs")
    numeric = [c for c in frame.columns if c != "phase"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    if frame["epoch"].isna().any():
        raise ValueError("metrics.csv has malformed rows")
    return frame


def _results(frame: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"epochs_done": len(frame)}
    result = next((p for p in RESULT_PHASES if (frame["phase"] == p).any()), None)
    if result is not None:
        mine = frame[frame["phase"] == result]
        out.update(
            final_test_acc=mine["test_acc"].iloc[-1],
            best_test_acc=mine["test_acc"].max(),
            final_test_loss=mine["test_loss"].iloc[-1],
            best_test_loss=mine["test_loss"].min(),
        )
    pretrain = frame[frame["phase"] == "pretrain"]
    if not pretrain.empty:
        out["rotation_test_acc"] = pretrain["test_acc"].iloc[-1]
    return out


def collect(root: Path, skip: Path | None = None) -> Collection:
    """Every run under `root` (except those under `skip`, the report's own folder)."""
    rows, epochs, problems, configs = [], [], [], {}
    for run_dir in find_run_dirs(root, skip):
        name = str(run_dir.relative_to(root)) if run_dir != root else "."
        summary = _summary(run_dir)
        try:
            frame = _metrics(run_dir)
        except ValueError as err:
            if summary and not (run_dir / "metrics.csv").exists():
                frame = pd.DataFrame(columns=METRIC_COLUMNS)  # started, no epoch logged yet
            else:
                problems.append(f"{name}: {err}; skipped")
                continue
        config = _flat_config(run_dir)
        configs[name] = config
        row = {
            "run": name,
            "task": summary.get("task") or config.get("task.name", "unknown"),
            "status": _status(run_dir, summary),
            "seed": config.get("seed", summary.get("seed", 0)),
            **_results(frame),
            "wall_seconds": summary.get("wall_seconds", frame.get("epoch_seconds", pd.Series()).sum()),
        }
        rows.append(row)
        if len(frame):
            epochs.append(frame.assign(run=name))
    settings = _varying(configs)
    runs = pd.DataFrame(rows)
    for key in settings:
        runs[key] = [configs[r].get(key) for r in runs["run"]] if len(runs) else []
    epoch_frame = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()
    if len(epoch_frame):
        joined = ["task", "status", "seed", *settings]
        epoch_frame = epoch_frame.merge(runs[["run", *joined]], on="run")
    return Collection(runs, epoch_frame, settings, configs, problems)


def _varying(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between runs, in config order; seed is not a setting."""
    keys: dict[str, None] = {}
    for config in configs.values():
        keys.update(dict.fromkeys(config))
    varying = []
    for key in keys:
        if key in NOT_SETTINGS or key == "seed":
            continue
        values = {json.dumps(c.get(key), sort_keys=True, default=str) for c in configs.values()}
        if len(values) > 1:
            varying.append(key)
    return varying

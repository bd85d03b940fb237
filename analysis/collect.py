"""An outputs tree -> pandas frames: one row per run, one row per run and epoch.

It reads what runs leave behind (`.hydra/config.yaml`, `metrics.csv`, `summary.json`, the
`.lock` of a live run, through `sweeper.lock`, which has no torch in it) and never imports the
trainer, so any run, old or new, can be read. On request it also reads the runs an earlier
report recorded (its `runs.csv` and `epochs.csv`), so reports made on several machines merge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeper.lock import is_held
from sweeper.records import (
    CONFIG_DIR, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TASKS, VIT_SHAPE, Status, phase_results,
    read_metrics, result_phase, run_results,
)
from sweeper.rundir import ADDED, NOT_RESULTS, TARGET, load_config_file

METRIC_COLUMNS = ["phase", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
RUNS_CSV, EPOCHS_CSV = "runs.csv", "epochs.csv"  # what a report records of its runs
# runs.csv: these columns, then every config key, then the results from RESULTS_START on.
RUNS_CSV_HEAD, RESULTS_START = ["run", "task", "status", "seed"], "epochs_done"
# Keys that name where or how a run ran, not what it measured: never a "setting".
NOT_SETTINGS = {"device", "compile", "eval_batch_size", "data.root", "data.cache_dir", "task.name",
                "resume", "checkpoint_every", "logger", "tta"}  # tta adds columns, changes none


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
    return _as_today(load_config_file(path))


def _as_today(config: dict[str, Any]) -> dict[str, Any]:
    """A stored flat config in today's keys: keys added since at the neutral value older runs
    trained with; the ViT's shape, which older runs kept under model.*, at the top level."""
    config = {**ADDED, **config}
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


@dataclass
class _Found:
    """One run as read, from its directory or from a report's record of it."""
    name: str
    config: dict[str, Any]
    frame: pd.DataFrame
    summary: dict[str, Any]
    status: str
    recorded: bool = False  # read from a report's CSVs


def _run_dirs(root: Path, exclude: set[Path], problems: list[str]) -> list[_Found]:
    found = []
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
        found.append(_Found(name, config, frame, summary,
                            _status(run_dir, summary, damage is not None)))
    return found


def find_report_dirs(root: Path) -> list[Path]:
    """Folders holding an earlier report's runs.csv and epochs.csv, at any depth."""
    found = {p.parent for p in root.rglob(RUNS_CSV) if (p.parent / EPOCHS_CSV).is_file()}
    return sorted(d for d in found if not any(p.startswith(".") for p in d.relative_to(root).parts))


def _cell(text: str) -> Any:
    """A runs.csv cell as the config value it was written from: int, float, bool or text."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _recorded_runs(report_dir: Path, root: Path) -> list[_Found]:
    """The runs a report recorded; raises ValueError naming what is wrong with its files."""
    try:
        runs = pd.read_csv(report_dir / RUNS_CSV, dtype=str, keep_default_na=False)
        epochs = pd.read_csv(report_dir / EPOCHS_CSV, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{RUNS_CSV} or {EPOCHS_CSV} is unreadable ({err})") from None
    columns = list(runs.columns)
    if columns[:4] != RUNS_CSV_HEAD or RESULTS_START not in columns or "run" not in epochs:
        raise ValueError(f"{RUNS_CSV} and {EPOCHS_CSV} are not a report's "
                         f"({RUNS_CSV} starts {', '.join(columns[:4])})")
    keys = columns[4:columns.index(RESULTS_START)]
    logged = list(epochs.columns[:list(epochs.columns).index("run")])
    if not set(METRIC_COLUMNS) <= set(logged):
        raise ValueError(f"{EPOCHS_CSV} lacks {', '.join(sorted(set(METRIC_COLUMNS) - set(logged)))}")
    prefix = report_dir.relative_to(root)
    found = []
    for record in runs.to_dict("records"):
        config = _as_today({k: _cell(record[k]) for k in keys if record[k] != ""})  # "": no such key
        config["seed"] = _cell(record["seed"])
        config.setdefault("task.name", record["task"])  # older reports kept only varying keys
        frame = epochs.loc[epochs["run"] == record["run"], logged].replace("", np.nan)
        numbers = [c for c in logged if c != "phase"]
        try:
            frame[numbers] = frame[numbers].apply(pd.to_numeric)
        except ValueError as err:
            raise ValueError(f"{EPOCHS_CSV} has a value that is not a number ({err})") from None
        frame = (frame.dropna(axis=1, how="all").reset_index(drop=True)  # other runs' columns
                 if len(frame) else pd.DataFrame(columns=METRIC_COLUMNS))
        summary = {"task": record["task"], **{k: _cell(record[k]) for k in
                                              ("epochs_planned", "wall_seconds") if record[k]}}
        found.append(_Found(str(prefix / record["run"]), config, frame, summary, record["status"],
                            recorded=True))
    return found


def collect(root: Path, exclude: set[Path] = frozenset(), reports: bool = False) -> Collection:
    """Every run under `root` but those in `exclude` (resolved paths: a study's trials; the
    report's own folder). With `reports`, also the runs recorded by the reports under `root`."""
    problems: list[str] = []
    found = _run_dirs(root, exclude, problems)
    recorded: dict[str, list[str]] = {}  # report -> the runs it recorded
    for report_dir in find_report_dirs(root) if reports else []:
        if report_dir.resolve() in exclude:
            continue
        try:
            records = _recorded_runs(report_dir, root)
            found += records
            recorded[str(report_dir.relative_to(root))] = [r.name for r in records]
        except ValueError as err:
            problems.append(f"{report_dir.relative_to(root)}: {err}; skipped")
    rows, epochs, configs, series = [], [], {}, {}
    for run in found:
        if run.name in configs:
            problems.append(f"{run.name}: named twice (a run folder and a report's record); "
                            f"counted once")
            continue
        configs[run.name] = run.config
        logged = run.frame.to_dict("records")
        series[run.name] = (run.recorded, tuple(run.frame["test_acc"]))
        rows.append({
            "run": run.name,
            "task": run.summary.get("task") or run.config.get("task.name", "unknown"),
            "status": run.status,
            "seed": run.config.get("seed", run.summary.get("seed", 0)),
            **run_results(phase_results(logged), run.summary.get("result_phase")),
            "result_phase": result_phase(run.frame["phase"].unique() if len(run.frame) else [],
                                         run.summary.get("result_phase")),
            "epochs_planned": planned_epochs(run.config, run.summary),
            "wall_seconds": run.summary.get("wall_seconds",
                                            run.frame.get("epoch_seconds", pd.Series()).sum()),
        })
        if len(run.frame):
            epochs.append(run.frame.assign(run=run.name))
    twins, kept_both = _twins(rows, configs, series)
    for twin, kept in twins.items():
        problems.append(f"{twin}: the same config and seed as {kept}: counted once, as {kept}")
        del configs[twin]
    problems += [f"{run}: the same config and seed as {other}, other epochs (a run made "
                 f"elsewhere, e.g. another device or precision): both counted"
                 for run, other in kept_both]
    rows = [r for r in rows if r["run"] in configs]
    epochs = [e for e in epochs if e["run"].iloc[0] in configs]
    settings = _varying(configs)
    problems += _unrecorded(recorded, configs, {r["run"]: r["task"] for r in rows}, settings)
    runs = pd.DataFrame(rows)
    if len(runs):
        keys = [k for k in dict.fromkeys(k for c in configs.values() for k in c)
                if k not in runs.columns]
        typed = {k: typed_column([configs[r].get(k) for r in runs["run"]]) for k in keys}
        results = runs.drop(columns=RUNS_CSV_HEAD)
        runs = pd.concat([runs[RUNS_CSV_HEAD],
                          pd.DataFrame(typed, index=runs.index), results], axis=1)
    epoch_frame = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame()
    if len(epoch_frame):
        joined = ["task", "status", "seed", *settings]
        epoch_frame = epoch_frame.merge(runs[["run", *joined]], on="run")
    return Collection(runs, epoch_frame, settings, configs, problems)


def _unrecorded(recorded: dict[str, list[str]], configs: dict[str, dict[str, Any]],
                tasks: dict[str, str], settings: list[str]) -> list[str]:
    """A line per report lacking settings that every other run of the same task (and model, where
    the record names it) has: an older report recorded only the keys that varied within it, so
    its runs are grouped without them."""
    lines = []
    for report, names in recorded.items():
        common: dict[tuple[str, Any], set[str]] = {}  # keys every outside run of a kind has
        for run in set(configs) - set(names):
            config = configs[run]
            for kind in ((tasks[run], None), (tasks[run], config.get("model.name"))):
                common[kind] = common[kind] & set(config) if kind in common else set(config)
        lacking: set[str] = set()
        for run in (n for n in names if n in configs):
            config = configs[run]
            lacking |= common.get((tasks[run], config.get("model.name")), set()) - set(config)
        missing = [k for k in settings if k in lacking]
        if missing:
            lines.append(f"{report}: does not record {', '.join(missing)} (an older report kept "
                         f"only the settings that varied within it): its runs are grouped "
                         f"without them")
    return lines


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


def _twins(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]],
           series: dict[str, tuple[bool, tuple[float, ...]]],
           ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Runs that repeat another's resolved config and seed: twin -> the run kept, the furthest
    along (a run folder before a report's record of it). Two run folders are twins (the same
    command run under outputs/runs and outputs/multirun); a report's record is a twin only when
    its test accuracies are those of the other run so far (the same run, recorded again). Also
    returns the pairs of config and seed kept twice: the same settings measured elsewhere."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        config = {k: v for k, v in configs[row["run"]].items() if k not in NOT_RESULTS}
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), []).append(row)
    twins, kept_both = {}, []
    for group in groups.values():
        kept: list[str] = []
        for row in sorted(group, key=lambda r: (-(r.get("epochs_done") or 0),
                                                 r["status"] != Status.COMPLETE,
                                                 series[r["run"]][0], r["run"])):
            recorded, accs = series[row["run"]]
            same = next((k for k in kept if not (recorded or series[k][0])
                         or series[k][1][:len(accs)] == accs), None)
            if same is not None:
                twins[row["run"]] = same
            else:
                kept_both += [(row["run"], kept[0])] if kept else []
                kept.append(row["run"])
    return twins, kept_both


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

"""Runs -> comparison tables: one per experiment family, mean ± std over seeds, with a verdict.

Families never mix tasks: the ViT grid (task=classify) and part A (rotation pre-training and
its baselines) are compared separately. Within the ViT grid a family varies its own keys
(patch x overlap; heads; CLS layer; anything else) with every other setting held at the value
most runs share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy.stats import t as student_t, ttest_ind

from analysis.collect import RESULTS_START, RUNS_CSV_HEAD, Collection
from sweeper.records import PART_A, PRETEXT_TASKS, Status
from sweeper.reference import vit_curve

FAMILIES = [
    ("Patch size x overlap", ["patch", "overlap"]),
    ("Attention heads", ["heads"]),
    ("CLS token layer", ["cls_layer"]),
]
# (column, heading, True when larger is better)
METRICS = [
    ("final_test_acc", "final test acc", True),
    ("best_test_acc", "best test acc", True),
    ("final_tta_test_acc", "final test acc, flip TTA", True),
    ("final_tta_translate_test_acc", "final test acc, flip + translate TTA", True),
    ("final_test_loss", "final test loss", False),
    ("rotation_test_acc", "rotation test acc", True),
    ("wall_seconds", "time (s)", False),
]
REFERENCE_KEYS = ("patch", "heads", "overlap", "cls_layer")


@dataclass
class Table:
    title: str
    keys: list[str]  # the columns that name a setting
    stats: pd.DataFrame  # a row per setting: keys, label, <metric>_mean/_std/_n, reference
    verdict: str
    runs: pd.DataFrame  # the runs aggregated here, with a `label` column


def label(values: dict[str, Any]) -> str:
    """`k=v, ...` over the keys a run has: a setting it never read is left out, not `k=nan`."""
    return ", ".join(f"{k}={v}" for k, v in values.items() if not _unset(v)) or "all runs"


def _unset(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _variant(config: dict[str, Any]) -> str:
    task, frozen = config.get("task.name"), config.get("task.freeze_encoder")
    head = "linear probe" if frozen else "fine-tuned"
    if task in PRETEXT_TASKS:
        return f"rotation pre-training, {head}"
    if task == "finetune":
        return f"saved encoder, {head}"
    return "from scratch on B"


def build_tables(col: Collection, reference: bool = False) -> list[Table]:
    runs = col.runs.copy()
    if runs.empty:
        return []
    if "pretrain_epochs" in runs:  # every config holds the default; only a pretext reads it
        runs.loc[~runs["task"].isin(PRETEXT_TASKS), "pretrain_epochs"] = math.nan
    tables = []
    vit = runs[runs["task"] == "classify"]
    if len(vit):
        tables += _grid_tables(col, vit, reference)
    part_a = runs[runs["task"].isin(PART_A)].copy()
    if len(part_a):
        part_a["variant"] = [_variant(col.configs.get(r, {})) for r in part_a["run"]]
        others = [k for k in _varying(part_a, col.settings) if not k.startswith("task.")]
        tables.append(_table("Part A: rotation pre-training vs baselines", part_a,
                             ["variant", *others], col, False))
    other = runs[~runs["task"].isin(("classify", *PART_A))]
    for task, group in other.groupby("task"):
        tables.append(_table(f"Task {task}", group, _varying(group, col.settings), col, False))
    return tables


def _varying(runs: pd.DataFrame, settings: list[str]) -> list[str]:
    return [k for k in settings if k in runs and runs[k].dropna().astype(str).nunique() > 1]


def _mode(runs: pd.DataFrame, key: str) -> Any:
    return runs[key].astype(str).mode().iloc[0]


def _grid_tables(col: Collection, runs: pd.DataFrame, reference: bool) -> list[Table]:
    varying = _varying(runs, col.settings)
    if not varying:
        return [_table("ViT runs", runs, [], col, reference)]
    tables = []
    families = [(t, [k for k in keys if k in varying]) for t, keys in FAMILIES]
    rest = [k for k in varying if all(k not in keys for _, keys in FAMILIES)]
    if rest:
        families.append(("Other settings", rest))
    for title, keys in families:
        if not keys:
            continue
        held = [k for k in varying if k not in keys]
        mask = pd.Series(True, index=runs.index)
        for k in held:
            mask &= runs[k].astype(str) == _mode(runs, k)
        chosen = runs[mask]
        if chosen[keys].astype(str).drop_duplicates().shape[0] < 2:
            continue
        if held:
            title += " (" + label({k: _mode(runs, k) for k in held}) + ")"
        tables.append(_table(title, chosen, keys, col, reference))
    placed = set().union(*(set(t.runs["run"]) for t in tables)) if tables else set()
    left = runs[~runs["run"].isin(placed)]
    if len(left):  # runs that differ from the rest in more than one family: shown, never dropped
        tables.append(_table("Runs outside the families above", left,
                             varying, col, reference, controlled=False))
    return tables


def progress(run: pd.Series) -> str:
    """`complete`, or the status of an unfinished run with its epochs done of those planned."""
    if run["status"] == Status.COMPLETE:
        return Status.COMPLETE.value
    planned = run.get("epochs_planned")
    of = f"/{int(planned)}" if isinstance(planned, (int, float)) and not pd.isna(planned) else ""
    return f"{run['status']} {int(run['epochs_done'])}{of} epochs"


def _table(title: str, runs: pd.DataFrame, keys: list[str], col: Collection,
           reference: bool, controlled: bool = True) -> Table:
    """Figures are means over the setting's complete runs only: a run still going, killed or
    diverged shows its progress in the status column, never a "final" number. Settings that
    differ in more than one family's keys (`controlled=False`) are listed, never ranked."""
    runs = runs.copy()
    runs["label"] = [label({k: r[k] for k in keys}) for _, r in runs.iterrows()]
    rows = []
    for name, group in runs.groupby("label", sort=False):
        row: dict[str, Any] = {"label": name, **{k: group[k].iloc[0] for k in keys}}
        complete = group[group["status"] == Status.COMPLETE]
        for metric, _, _ in METRICS:
            values = complete[metric].dropna() if metric in complete else pd.Series(dtype=float)
            row[f"{metric}_mean"] = values.mean() if len(values) else math.nan
            row[f"{metric}_std"] = values.std() if len(values) > 1 else math.nan
            row[f"{metric}_n"] = len(values)
        row["final_test_acc_values"] = list(complete["final_test_acc"].dropna()) \
            if "final_test_acc" in complete else []
        states = [progress(r) for _, r in group.iterrows()]
        row["statuses"] = ", ".join(f"{s} x{states.count(s)}" if states.count(s) > 1 else s
                                    for s in dict.fromkeys(states))
        if reference:
            curve = reference_curve(col.configs.get(group["run"].iloc[0], {}))
            row["report_test_acc"] = math.nan if curve is None else curve["test_acc"].iloc[-1]
            row["passed_report"] = passed_at(col.epochs, list(complete["run"]),
                                             row["report_test_acc"])
        rows.append(row)
    stats = pd.DataFrame(rows)
    stats = stats.sort_values("final_test_acc_mean", ascending=False, na_position="last")
    verdict = _verdict(stats) if controlled else UNCONTROLLED
    return Table(title, keys, stats.reset_index(drop=True), verdict, runs)


def reference_curve(config: dict[str, Any]) -> Optional[pd.DataFrame]:
    """The report's per-epoch figures for a ViT classification run of the same shape, or None."""
    if config.get("model.name") != "vit" or config.get("task.name") != "classify":
        return None
    rows = vit_curve(*(config.get(k) for k in REFERENCE_KEYS))
    if not rows:
        return None
    curve = pd.DataFrame(rows)
    for column in ("epoch", "train_acc", "test_acc", "train_loss", "test_loss"):
        curve[column] = pd.to_numeric(curve[column])
    return curve


def passed_at(epochs: pd.DataFrame, runs: list[str], bar: float) -> str:
    """Time to the report's answer: the first epoch by which every run had scored a test
    accuracy above `bar` (the report's final figure), with the training seconds the slowest run
    took to get there; "not passed" when a run never got above it."""
    if math.isnan(bar) or not runs:
        return "—"
    reached = []
    for run in runs:
        rows = epochs[epochs["run"] == run]
        if rows.empty:
            return "—"
        rows = rows[rows["phase"] == rows["phase"].iloc[-1]].sort_values("epoch")  # the result phase
        above = rows[(rows["test_acc"] > bar).fillna(False).astype(bool)]
        if above.empty:
            return f"not passed in {int(rows['epoch'].max())} epochs"
        k = int(above["epoch"].iloc[0])
        seconds = rows.loc[rows["epoch"] <= k, "epoch_seconds"] if "epoch_seconds" in rows else None
        known = seconds is not None and not seconds.isna().any()
        reached.append((k, float(seconds.sum()) if known else math.nan))
    k = max(e for e, _ in reached)
    times = [s for _, s in reached]
    slowest = math.nan if any(math.isnan(s) for s in times) else max(times)
    took = ("" if math.isnan(slowest) else
            f", {slowest:.0f} s" if slowest < 600 else f", {slowest / 60:.0f} min")
    return f"epoch {k}{took}" + (f" (n={len(runs)})" if len(runs) > 1 else "")


UNCONTROLLED = ("These runs differ from the families above, and from each other, in more than "
                "one setting: no winner is named.")


def _verdict(stats: pd.DataFrame) -> str:
    ranked = stats.dropna(subset=["final_test_acc_mean"])
    if len(ranked) < 2:
        return "One setting only: nothing to compare."
    best, second = ranked.iloc[0], ranked.iloc[1]
    gap = 100 * (best["final_test_acc_mean"] - second["final_test_acc_mean"])
    if gap == 0:
        return (f"{best['label']} and {second['label']} tie on final test accuracy "
                f"({100 * best['final_test_acc_mean']:.2f} %): no winner.")
    text = (f"{best['label']} wins on final test accuracy: {100 * best['final_test_acc_mean']:.2f} % "
            f"against {100 * second['final_test_acc_mean']:.2f} % for {second['label']} "
            f"(+{gap:.2f} points).")
    return text + " " + gap_test(100 * np.array(best["final_test_acc_values"]),
                                 100 * np.array(second["final_test_acc_values"]),
                                 best["label"], second["label"])


def gap_test(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> str:
    """Whether the gap between two settings' final accuracies (points, one value per seed) is
    shown at 95 %: Welch's t-test when both have two seeds or more; with one seed on one side,
    whether it falls outside the other's 95 % prediction interval for one more seed."""
    if len(a) >= 2 and len(b) >= 2:
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
        shown = "shown at 95 %" if p < 0.05 else "not shown at 95 %"
        return f"Welch's t-test over {len(a)} and {len(b)} seeds: p = {p:.3g}, {shown}."
    if min(len(a), len(b)) == 1 and max(len(a), len(b)) >= 2:
        many, one, many_name, one_name = (a, b, name_a, name_b) if len(a) > 1 else (b, a, name_b, name_a)
        n = len(many)
        half = student_t.ppf(0.975, n - 1) * many.std(ddof=1) * math.sqrt(1 + 1 / n)
        low, high = many.mean() - half, many.mean() + half
        inside = low <= one[0] <= high
        return (f"{one_name} ran one seed: {one[0]:.2f} % lies {'inside' if inside else 'outside'} "
                f"the 95 % prediction interval for one more seed of {many_name} "
                f"({low:.2f} to {high:.2f} %, from {n} seeds): "
                f"{'not shown' if inside else 'shown'} at 95 %.")
    return "One seed per setting: no seed-to-seed spread to judge the gap by."


def _cell(mean: float, std: float, n: int, percent: bool) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    scale, unit = (100, " %") if percent else (1, "")
    text = f"{scale * mean:.2f}"
    if not math.isnan(std):
        text += f" ± {scale * std:.2f}"
    return f"{text}{unit} (n={n})"


def markdown(table: Table) -> str:
    """The table as GitHub markdown, the best value of each column in bold."""
    metrics = [m for m in METRICS if table.stats[f"{m[0]}_n"].sum() > 0]
    head = ["setting", *[h for _, h, _ in metrics], "status"]
    has_ref = "report_test_acc" in table.stats and table.stats["report_test_acc"].notna().any()
    ref_at = 2 if metrics and metrics[0][0] == "final_test_acc" else 1  # beside ours, if shown
    if has_ref:
        head[ref_at:ref_at] = ["report final test acc", "above it after"]
    best = {}
    for metric, _, larger in metrics:
        col = table.stats[f"{metric}_mean"].dropna()
        if len(col) > 1:
            best[metric] = col.max() if larger else col.min()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.stats.iterrows():
        cells = [row["label"]]
        for metric, _, _ in metrics:
            percent = metric.endswith("_acc")
            cell = _cell(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"], percent)
            if metric in best and row[f"{metric}_mean"] == best[metric]:
                cell = f"**{cell}**"
            cells.append(cell)
        if has_ref:
            ref = row.get("report_test_acc", math.nan)
            cells[ref_at:ref_at] = ["—" if math.isnan(ref) else f"{100 * ref:.2f} %",
                                    row.get("passed_report", "—")]
        cells.append(row["statuses"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


FINAL_COLUMNS = ["final_test_acc", "best_test_acc", "final_test_loss", "best_test_loss",
                 "final_tta_test_acc", "final_tta_translate_test_acc", "rotation_test_acc"]


def write_runs_csv(col: Collection, path: Path) -> None:
    """A row per run: every key of the runs' resolved configs (the same columns whatever varies),
    then the results. Final and best figures are those of complete runs; an unfinished run has
    its epochs done of planned and its last logged test accuracy instead."""
    runs = col.runs.copy()
    runs["last_test_acc"] = runs.get("final_test_acc")
    unfinished = runs["status"] != Status.COMPLETE
    for column in FINAL_COLUMNS:
        if column in runs:
            runs[column] = runs[column].mask(unfinished)
    keys = [k for k in dict.fromkeys(k for c in col.configs.values() for k in c) if k != "seed"]
    columns = [*RUNS_CSV_HEAD, *keys, RESULTS_START, "epochs_planned",
               *FINAL_COLUMNS, "last_test_acc", "wall_seconds"]
    runs.reindex(columns=columns).to_csv(path, index=False)

"""A hyper-parameter study (a sweep folder with study.json and study.csv, written by the
search after every batch) -> the report's section: trials table, best trial, optimisation
history and the parameters' importances. Its trials' runs are reported here, not among the
other tables: each has its own settings, and they were chosen on validation accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.plots import save  # noqa: E402
from sweeper.records import STUDY_CSV, STUDY_JSON  # noqa: E402

STATE_COLOURS = {"complete": "C0", "pruned": "C1", "fail": "C3", "running": "C7"}


@dataclass
class Study:
    folder: Path
    about: dict[str, Any]  # study.json
    trials: pd.DataFrame  # study.csv

    @property
    def params(self) -> list[str]:
        return list(self.about.get("space") or {})

    def run_dirs(self) -> set[Path]:
        return {(self.folder / r).resolve() for r in self.trials["run_dir"].dropna() if r}


def find(root: Path) -> tuple[list[Study], list[str]]:
    """Every study under `root`, and a line for each study folder that cannot be read."""
    studies, problems = [], []
    for path in sorted(root.rglob(STUDY_JSON)):
        try:
            about = json.loads(path.read_text())
            trials = pd.read_csv(path.parent / STUDY_CSV, dtype={"run_dir": str, "state": str})
            problem = _shape_problem(about, trials)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            problem = f"unreadable ({type(err).__name__})"
        if problem:
            problems.append(f"{path.parent.relative_to(root)}: study {problem}; skipped")
            continue
        studies.append(Study(path.parent, about, trials))
    return studies, problems


TRIAL_COLUMNS = ("trial", "state", "run_dir", "val_acc", "test_acc")


def _shape_problem(about: Any, trials: pd.DataFrame) -> Optional[str]:
    """What in study.json / study.csv is not of the shape the search writes, or None."""
    if not isinstance(about, dict):
        return "study.json is not an object"
    for key, kind in (("space", dict), ("importances", dict), ("trials", dict), ("fixed", list),
                      ("best", dict), ("baseline", dict)):
        if about.get(key) is not None and not isinstance(about[key], kind):
            return f"study.json's {key} is not a {kind.__name__}"
    for key in ("metric", "direction"):  # a name, or a list of names (several objectives)
        value = about.get(key, "")
        if not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"study.json's {key} is not a name or a list of names"
    if about.get("pareto") is not None and not (
            isinstance(about["pareto"], list) and all(isinstance(v, int) for v in about["pareto"])):
        return "study.json's pareto is not a list of trial numbers"
    if not all(isinstance(v, (int, float)) for v in (about.get("importances") or {}).values()):
        return "study.json's importances are not numbers"
    for key, needs in (("best", ("trial", "val_acc", "params")), ("baseline", ("trial", "val_acc"))):
        if about.get(key) and not all(k in about[key] for k in needs):
            return f"study.json's {key} lacks {', '.join(needs)}"
    if about.get("best") and not isinstance(about["best"]["params"], dict):
        return "study.json's best params are not an object"
    missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
    if missing:
        return f"study.csv lacks columns {', '.join(missing)}"
    for column in ("trial", "val_acc", "test_acc"):
        if not pd.api.types.is_numeric_dtype(trials[column]):
            return f"study.csv's {column} column is not numeric"
    return None


def _pct(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.2f}"


def _value(x: Any) -> str:
    if isinstance(x, float) and math.isnan(x):
        return ""
    return f"{x:.4g}" if isinstance(x, float) else str(x)


OBJECTIVE_WORDS = {"val_acc": "the final validation accuracy", "val_loss": "the final validation loss",
                   "seconds": "the trial's wall time"}


def summary_text(study: Study) -> str:
    about = study.about
    counts = ", ".join(f"{n} {s}" for s, n in (about.get("trials") or {}).items() if n)
    metrics = about.get("metric", "val_acc")
    directions = about.get("direction", "maximize")
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    ways = [directions] if isinstance(directions, str) else list(directions)
    judged = ", ".join(f"{OBJECTIVE_WORDS.get(n, n)} ({w})" for n, w in zip(names, ways))
    text = (f"Study `{about.get('study')}`: {counts}. Objective: {judged}, on images held out of "
            f"the training set; the test accuracy is shown beside it and was never used to "
            f"choose." + (f" Pareto front: trials {', '.join(map(str, about['pareto']))}."
                          if about.get("pareto") else ""))
    best = about.get("best")
    if best:
        params = ", ".join(f"{k}={_value(v)}" for k, v in best["params"].items())
        text += (f" Best: trial {best['trial']}, validation {_pct(best['val_acc'])} %, "
                 f"test {_pct(best.get('test_acc'))} %, with {params}.")
    base = about.get("baseline")
    if base:
        result = (f"validation {_pct(base['val_acc'])} %, test {_pct(base.get('test_acc'))} %"
                  if base.get("val_acc") is not None else base.get("state", "not finished"))
        text += f" The config's own values (trial {base['trial']}): {result}."
    if about.get("fixed"):
        text += " Fixed: " + " ".join(f"`{f}`" for f in about["fixed"]) + "."
    return text


def space_markdown(study: Study) -> str:
    space = study.about.get("space") or {}
    lines = ["| parameter | searched over | importance |", "|---|---|---|"]
    imp = study.about.get("importances") or {}
    for k, v in space.items():
        lines.append(f"| {k} | {v} | {_value(imp[k]) if k in imp else ''} |")
    return "\n".join(lines)


def trials_markdown(study: Study) -> str:
    """Trials, best validation accuracy first; unfinished and failed ones last."""
    t = study.trials.sort_values(["val_acc", "trial"], ascending=[False, True], na_position="last")
    head = ["trial", "state", "val acc (%)", "test acc (%)", *study.params, "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in t.iterrows():
        state = r["state"] if r.get("status") in (r["state"], "", None) or pd.isna(r.get("status")) \
            else f"{r['state']} ({r['status']})"
        minutes = "" if pd.isna(r.get("seconds")) else f"{r['seconds'] / 60:.1f}"
        cells = [str(r["trial"]), state, _pct(r["val_acc"]), _pct(r["test_acc"]),
                 *(_value(r.get(p)) for p in study.params), minutes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def history_figure(study: Study, path: Path) -> Path:
    """Validation accuracy of each trial in the order asked, the best so far as a line."""
    t = study.trials.sort_values("trial")
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    for state, colour in STATE_COLOURS.items():
        mine = t[(t["state"] == state) & t["val_acc"].notna()]
        if len(mine):
            ax.scatter(mine["trial"], 100 * mine["val_acc"], color=colour, label=state, zorder=3)
    done = t[t["state"] == "complete"]
    if len(done):
        best = (100 * done["val_acc"]).cummax()
        ax.step(done["trial"], best, where="post", color="black", lw=1.2, label="best so far")
    ax.set(title=f"Study {study.about.get('study')}: optimisation history", xlabel="trial",
           ylabel="validation accuracy (%)")
    ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, path)


def importance_figure(study: Study, path: Path) -> Optional[Path]:
    imp = study.about.get("importances")
    if not imp:
        return None
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5), layout="constrained")
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set(title="Parameter importances (PED-ANOVA)", xlabel="importance")
    return save(fig, path)


CAPTIONS = {
    "history": "Each dot is a trial (failed and pruned ones are marked); the line is the best "
               "validation accuracy found so far.",
    "importance": "How much of the variation in validation accuracy each parameter explains "
                  "among the better trials (Optuna's PED-ANOVA); few trials make it rough.",
}

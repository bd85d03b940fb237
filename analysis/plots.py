"""Tables -> PNG figures: per-epoch curves, final accuracy bars, time per run."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.tables import Table, label, reference_curve  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3})


MAX_LABEL = 40  # characters of a run's label on an axis; runs.csv keeps the full name


def slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")[:60]


def wrap(title: str, width: int = 70) -> str:
    """A title on as many lines as it needs, never cut at the figure's edge."""
    return textwrap.fill(title, width)


def short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure and free it (a report draws dozens)."""
    fig.savefig(path)
    plt.close(fig)
    return path


def whole_numbers(ax: plt.Axes) -> None:
    """Epochs and trials are counted: no 1.5 on their axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves(table: Table, epochs: pd.DataFrame, path: Path,
           reference_configs: Optional[dict] = None) -> Path:
    """Test accuracy and loss per epoch: a line per setting (mean over seeds, band min..max).
    `reference_configs` (run -> flat config) adds the report's curve of the same shape, dashed."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    result = table.runs.set_index("run")["result_phase"]
    rows = epochs[epochs["phase"] == epochs["run"].map(result)]
    labels = table.runs.set_index("run")["label"]
    rows = rows.assign(label=rows["run"].map(labels))
    for i, name in enumerate(table.stats["label"]):
        mine = rows[rows["label"] == name]
        if mine.empty:
            continue
        colour = f"C{i % 10}"
        for ax, metric, scale in ((acc_ax, "test_acc", 100), (loss_ax, "test_loss", 1)):
            by_epoch = mine.groupby("epoch")[metric]
            mean = by_epoch.mean() * scale
            ax.plot(mean.index, mean.values, color=colour, label=short(name), lw=1.8,
                    marker="o" if len(mean) < 3 else None)  # a line of one point draws nothing
            if mine["run"].nunique() > 1:
                ax.fill_between(mean.index, by_epoch.min() * scale, by_epoch.max() * scale,
                                color=colour, alpha=0.2, lw=0)
        if reference_configs is not None:
            ref = reference_curve(reference_configs.get(mine["run"].iloc[0], {}))
            if ref is not None:
                acc_ax.plot(ref["epoch"], 100 * ref["test_acc"], color=colour, ls="--", lw=1.2,
                            label=f"{name} (report)")
                loss_ax.plot(ref["epoch"], ref["test_loss"], color=colour, ls="--", lw=1.2)
    acc_ax.set(title="Test accuracy", xlabel="epoch", ylabel="test accuracy (%)")
    loss_ax.set(title="Test loss", xlabel="epoch", ylabel="cross-entropy (mean per image)")
    acc_ax.legend(fontsize=8, loc="lower right")
    whole_numbers(acc_ax)
    whole_numbers(loss_ax)
    fig.suptitle(wrap(table.title, 110))
    return save(fig, path)


def final_bars(table: Table, path: Path) -> Path:
    """Final test accuracy per setting, error bars one standard deviation over seeds."""
    stats = table.stats
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(stats) + 2), 4.5), layout="constrained")
    std = stats["final_test_acc_std"].fillna(0) * 100
    x = range(len(stats))
    ax.bar(x, stats["final_test_acc_mean"] * 100, yerr=std, capsize=4,
           color=[f"C{i % 10}" for i in x])
    if "report_test_acc" in stats and stats["report_test_acc"].notna().any():
        ax.scatter(x, stats["report_test_acc"] * 100, marker="_", s=400, color="black",
                   label="report", zorder=3)
        ax.legend()
    for i, (m, n) in enumerate(zip(stats["final_test_acc_mean"], stats["final_test_acc_n"])):
        if not math.isnan(m):
            ax.annotate(f"{100 * m:.1f}\n(n={n})", (i, 100 * m), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(x), [short(t) for t in stats["label"]], rotation=20, ha="right", fontsize=8)
    width = max(30, int(9 * fig.get_figwidth()))
    ax.set(title=wrap(f"{table.title}: final test accuracy", width), ylabel="test accuracy (%)",
           ylim=(0, 105))
    return save(fig, path)


def run_times(runs: pd.DataFrame, settings: list[str], path: Path) -> Path:
    """Wall time of every run, coloured by task, each named by the settings that set it apart
    (and its seed); runs.csv has the full run directory."""
    ordered = runs.sort_values("wall_seconds")
    fig, ax = plt.subplots(figsize=(9, max(3, 0.3 * len(ordered) + 1.5)), layout="constrained")
    tasks = {t: f"C{i % 10}" for i, t in enumerate(sorted(ordered["task"].unique()))}
    ax.barh(range(len(ordered)), ordered["wall_seconds"] / 60,
            color=[tasks[t] for t in ordered["task"]])
    names = [short(label({**{k: r.get(k) for k in settings}, "seed": r.get("seed")}))
             for _, r in ordered.iterrows()]
    ax.set_yticks(range(len(ordered)), names, fontsize=7)
    ax.set(title="Time per run", xlabel="wall time (minutes)")
    ax.legend(handles=[Patch(color=c, label=t) for t, c in tasks.items()], fontsize=8)
    return save(fig, path)

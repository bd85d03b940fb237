"""The report's "why": per-class accuracy, confusion, and for ViTs attention maps, attention
distance and position-embedding similarity, read from the files a run writes when it completes
(sweeper/insight.py documents them). Runs without those files are left out of these figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.plots import save, short, wrap  # noqa: E402
from analysis.tables import Table  # noqa: E402
from sweeper.records import Status  # noqa: E402


def complete_runs(table: Table) -> dict[str, list[str]]:
    """Setting label -> its complete runs, in the table's order (best first)."""
    runs = table.runs[table.runs["status"] == Status.COMPLETE]
    return {name: list(runs[runs["label"] == name]["run"]) for name in table.stats["label"]
            if (runs["label"] == name).any()}


def _read_csv(path: Path) -> Optional[pd.DataFrame]:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def per_class_markdown(table: Table, root: Path) -> Optional[tuple[str, str]]:
    """(caption, table): classes in rows, settings in columns, test accuracy, mean ± std over
    complete runs."""
    columns = {}
    for name, runs in complete_runs(table).items():
        frames = [f for f in (_read_csv(root / r / "per_class.csv") for r in runs) if f is not None]
        if frames:
            acc = pd.concat([f.set_index("class")["accuracy"] for f in frames], axis=1)
            columns[name] = (acc.mean(axis=1), acc.std(axis=1), acc.shape[1])
    if not columns:
        return None
    # every group's classes (a folder dataset's c0..c9 beside CIFAR-10's names), in order seen
    classes = list(dict.fromkeys(c for mean, _, _ in columns.values() for c in mean.index))
    caption = "Test accuracy per class (%), mean ± std over complete runs"
    if len(classes) > MAX_CLASSES:
        caption += (f"; of {len(classes)} classes, the {MAX_CLASSES // 2} hardest and the "
                    f"{MAX_CLASSES // 2} easiest")  # CIFAR-100: the 10 hardest and the 10 easiest classes only
        average = pd.concat([mean for mean, _, _ in columns.values()], axis=1).mean(axis=1)
        ranked = list(average.sort_values(kind="stable").index)
        classes = ranked[:MAX_CLASSES // 2] + ranked[-(MAX_CLASSES // 2):]
    head = ["class", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in classes:
        cells = []
        for mean, std, n in columns.values():
            m, s = mean.get(c, math.nan), std.get(c, math.nan)
            text = "—" if math.isnan(m) else f"{100 * m:.1f}" + ("" if math.isnan(s) else f" ± {100 * s:.1f}")
            cells.append(text + (f" (n={n})" if n > 1 else ""))
        lines.append("| " + " | ".join([str(c), *cells]) + " |")
    return caption + ":", "\n".join(lines)


MAX_CLASSES = 20  # beyond this a per-class table or a confusion grid is no longer read


def _top_confusions(title: str, matrix: pd.DataFrame, rates: np.ndarray, path: Path) -> Path:
    off = rates.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:MAX_CLASSES]
    pairs = [np.unravel_index(k, off.shape) for k in order if off.flat[k] > 0]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * max(1, len(pairs))), layout="constrained")
    ax.barh(range(len(pairs)), [100 * off[i, j] for i, j in pairs], color="C0")
    ax.set_yticks(range(len(pairs)), [f"{matrix.index[i]} → {matrix.columns[j]}" for i, j in pairs],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="percent of the true class's test images",
           title=wrap(f"{title}: the {len(pairs)} most frequent confusions of {len(matrix)} classes", 60))
    return save(fig, path)


def _confusion(paths: list[Path]) -> Optional[pd.DataFrame]:
    frames = [f for f in (_read_csv(p) for p in paths) if f is not None]
    if not frames:
        return None
    total = sum(f.set_index(f.columns[0]) for f in frames)
    return total


def confusion_figure(title: str, runs: list[str], root: Path, path: Path,
                     file: str = "confusion.csv") -> Optional[Path]:
    """Row-normalised confusion (counts summed over the runs' seeds) as a heat map; with more
    than MAX_CLASSES classes, the most frequent confusions as bars."""
    matrix = _confusion([root / r / file for r in runs])
    if matrix is None:
        return None
    rates = matrix.div(matrix.sum(axis=1).replace(0, 1), axis=0).to_numpy(dtype=float)
    if len(matrix) > MAX_CLASSES:
        return _top_confusions(title, matrix, rates, path)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(matrix), 0.8 + 0.5 * len(matrix)),
                           layout="constrained")
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(rates):
        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                color="white" if v > 0.6 else "black")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=wrap(title, max(20, int(8 * fig.get_figwidth()))))
    ax.grid(False)
    return save(fig, path)


def _insights(table: Table, root: Path) -> dict[str, dict[str, Any]]:
    """Setting label -> insight.json of its first complete run that has one."""
    found = {}
    for name, runs in complete_runs(table).items():
        for run in runs:
            data = _read_json(root / run / "insight.json")
            if data is not None:
                found[name] = data
                break
    return found


def attention_figure(table: Table, root: Path, path: Path) -> Optional[Path]:
    """Fixed test images in rows, settings in columns: the CLS token's attention in the last
    block, averaged over heads, over the image."""
    found = _insights(table, root)
    if not found:
        return None
    first = next(iter(found.values()))
    n_images = len(first["images"])
    fig, axes = plt.subplots(n_images, len(found), figsize=(max(5.0, 1.6 * len(found) + 1),
                                                            1.6 * n_images), squeeze=False,
                             layout="constrained")
    for col, (name, data) in enumerate(found.items()):
        last = data["cls_attention"][-1]
        for row in range(n_images):
            ax = axes[row][col]
            ax.imshow(np.array(data["pixels"][row], dtype=np.uint8).transpose(1, 2, 0))
            if last is not None:
                side, patch, stride = data["grid"], data["patch"], data["stride"]
                grid = np.mean([head[row] for head in last], axis=0).reshape(side, side)
                lo = (patch - 1) / 2 - stride / 2
                hi = lo + side * stride
                ax.imshow(grid, cmap="inferno", alpha=0.55, extent=(lo, hi, hi, lo),
                          interpolation="bilinear")
            elif row == 0:
                ax.text(16, 16, "no CLS\nattention", ha="center", va="center", color="white",
                        fontsize=8, bbox={"facecolor": "black", "alpha": 0.6})
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, 31.5)
            ax.set_ylim(31.5, -0.5)
            if row == 0:
                ax.set_title(wrap(short(name), 24), fontsize=7)
            if col == 0:
                ax.set_ylabel(data["classes"][data["labels"][row]], fontsize=8)
    fig.suptitle(wrap(f"{table.title}: CLS attention, last block, heads averaged",
                      max(30, int(9 * fig.get_figwidth()))), fontsize=9)
    return save(fig, path)


def _panels(table: Table, root: Path, path: Path, title: str,
            draw: Callable[[Any, dict[str, Any]], None], sharey: bool = False) -> Optional[Path]:
    """A panel per setting (its first complete run with insight.json), drawn by `draw`."""
    found = _insights(table, root)
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(max(6.0, 2.8 * len(found) + 1), 3.2), squeeze=False,
                             sharey=sharey, layout="constrained")
    for ax, (name, data) in zip(axes[0], found.items()):
        draw(ax, data)
        ax.set_title(wrap(short(name), 30), fontsize=8)
    fig.suptitle(wrap(f"{table.title}: {title}", max(30, int(9 * fig.get_figwidth()))), fontsize=10)
    return save(fig, path)


def distance_figure(table: Table, root: Path, path: Path) -> Optional[Path]:
    """Mean attention distance per block, a point per head, a panel per setting."""

    def draw(ax: Any, data: dict[str, Any]) -> None:
        for block, heads in enumerate(data["attention_distance"]):
            ax.scatter([block] * len(heads), heads, s=14, alpha=0.8)
        ax.axvline(data["cls_block"] - 0.5, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="block", ylabel="mean attention distance (pixels)")

    return _panels(table, root, path, "attention distance (dotted: where the CLS token joins)",
                   draw, sharey=True)


def position_figure(table: Table, root: Path, path: Path) -> Optional[Path]:
    """Per setting, a mosaic: tile (i, j) is the cosine similarity of patch (i, j)'s position
    embedding with every other patch's."""

    def draw(ax: Any, data: dict[str, Any]) -> None:
        side = data["grid"]
        sim = np.array(data["position_similarity"]).reshape(side, side, side, side)
        framed = np.pad(sim, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=np.nan)
        tiles = framed.transpose(0, 2, 1, 3).reshape(side * (side + 1), side * (side + 1))
        ax.imshow(tiles, cmap="viridis", vmin=-1, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.grid(False)

    return _panels(table, root, path, "position-embedding similarity", draw)


CAPTIONS = {
    "attention": "Where the CLS token looks: its attention to each patch in the last block, "
                 "averaged over heads, drawn over the same test images for every setting.",
    "distance": "How far each head looks: the mean distance between a patch and the patches it "
                "attends to, per block (a point per head); small means local, large global.",
    "position": "What the position embeddings learned: tile (i, j) shows how similar patch (i, j)'s "
                "embedding is to every other patch's; a 2-D grid structure means positions were learned.",
    "confusion": "Which classes are mistaken for which, for the best setting (percent of the "
                 "true class's test images; beyond 20 classes, the most frequent confusions).",
    "rotation": "The pretext task: which rotations are mistaken for which on the rotated test set.",
}

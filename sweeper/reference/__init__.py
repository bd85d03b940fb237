"""The assignment report's own numbers, shipped as data (see README.md beside this file)."""

from __future__ import annotations

import csv
from importlib.resources import files
from pathlib import Path


def seed_results_path() -> Path:
    return Path(str(files(__name__) / "seed_results.csv"))


def seed_rows() -> list[dict[str, str]]:
    with open(seed_results_path(), newline="") as f:
        return list(csv.DictReader(f))


def vit_curve(patch: object, heads: object, overlap: object, cls_layer: object) -> list[dict[str, str]]:
    """The report's per-epoch rows for its first ViT experiment of this shape (it ran the
    baseline twice), sorted by epoch; empty when it ran no such ViT."""
    shape = ("vit", str(patch), str(heads), str(overlap), str(cls_layer))
    rows = [r for r in seed_rows()
            if (r["task"], r["patch"], r["heads"], r["overlap"], r["cls_layer"]) == shape]
    first = [r for r in rows if r["experiment"] == rows[0]["experiment"]]
    return sorted(first, key=lambda r: int(r["epoch"]))

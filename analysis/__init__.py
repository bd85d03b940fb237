"""Reads run directories (never the trainer) and writes tables, plots and a static page.

In a notebook: `runs, epochs = load_runs("outputs/")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import pandas as pd


def load_runs(path: Union[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run under `path` (any depth) as two frames: one row per run (every config key,
    typed, then status and results) and one row per run and epoch. A study's trials are runs
    like any other here. Raises FileNotFoundError when `path` does not exist."""
    from analysis.collect import collect

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of runs")
    col = collect(root)
    return col.runs, col.epochs

"""The assignment report's own numbers, shipped as data (see README.md beside this file)."""

from importlib.resources import files
from pathlib import Path


def seed_results_path() -> Path:
    return Path(str(files(__name__) / "seed_results.csv"))

"""A run composed and executed inside the test's process (to patch what it calls), and the
checks of an entry point's one-line error."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers.commands import ROOT
from sweeper.config import Settings, register_configs, validate


def compose_config(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def settings(*overrides: str) -> Settings:
    return validate(compose_config(list(overrides)))


def execute_in_process(tmp_path: Path, overrides: list[str]) -> dict[str, Any]:
    from sweeper.run import execute

    cfg = compose_config(overrides)
    return execute(validate(cfg), tmp_path / "run", cfg, overrides)


def run_in_process(tmp_path: Path, overrides: list[str]) -> float:
    """As `python -m sweeper` runs one job below its entry point: errors are raised, not shown."""
    from sweeper.run import run

    cfg = compose_config(overrides)
    return run(validate(cfg), tmp_path / "run", cfg, overrides)


def one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert text in proc.stderr, proc.stderr

"""Checks made once, before Hydra runs any job: the output folder can be written, and (for a
sweep) every job's config is valid. A sweep with invalid combinations launches nothing and
lists them all in one line, rather than failing at the first and never reaching the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from sweeper import stop
from sweeper.config import composition_error, unused_keys, validate
from sweeper.errors import ConfigError, StorageError, SweeperError, not_allowed
from sweeper.rundir import override_keys

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_writable(folder: Path) -> None:
    """Make sure a file can be made in `folder`, or raise StorageError saying why. The folders
    made for the probe are removed again: a command that fails later leaves none behind."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"cannot write the output folder {folder}: {err.strerror or err}") from None
    finally:
        for made_folder in made:
            try:
                made_folder.rmdir()
            except OSError:  # not empty (another process uses it) or already gone
                pass


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, expanded as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return [list(job) for batch in batches for job in batch]


def invalid_jobs(config: DictConfig, jobs: list[list[str]]) -> tuple[list[str], list[str]]:
    """'[overrides]: reason' for every job whose config does not validate, a job named by the
    overrides that set it apart from the others; then any key the command sets that no job
    uses (a key used by some jobs of a sweep, like pretrain_epochs across tasks, is fine)."""
    loader = GlobalHydra.instance().config_loader()
    shared = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
    bad, unused, last = [], None, None
    for job in jobs:
        try:
            job_cfg = loader.load_sweep_config(master_config=config, sweep_overrides=job)
            with read_write(job_cfg), open_dict(job_cfg):
                del job_cfg["hydra"]
            last = validate(job_cfg)
            mine = set(unused_keys(last, override_keys(job)))
            unused = mine if unused is None else unused & mine
        except (HydraException, OmegaConfBaseException, yaml.YAMLError) as err:  # it does not compose
            bad.append(f"[{' '.join(o for o in job if o not in shared)}]: {composition_error(err)}")
        except ConfigError as err:
            bad.append(f"[{' '.join(o for o in job if o not in shared)}]: {err}")
    return bad, sorted(unused or [])


OFFICIAL_OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def check_sweep(config: DictConfig) -> None:
    """The sweep folder is writable and every job of a basic sweep is valid, or SweeperError."""
    if config.hydra.sweeper.get("_target_") == OFFICIAL_OPTUNA:
        raise ConfigError(f"hydra.sweeper._target_={OFFICIAL_OPTUNA} is Hydra's own Optuna "
                          f"sweeper; this project's takes the same keys: drop the _target_ line "
                          f"(hydra/sweeper=optuna sets hydra_plugins.sweeper_search.OptunaSweeper)")
    if config.hydra.launcher.get("n_jobs") == 0:  # joblib would fail with a traceback
        raise not_allowed("hydra.launcher.n_jobs", 0, "1 or more runs at once (-1: one per CPU core)")
    check_writable(Path(OmegaConf.select(config, "hydra.sweep.dir")))
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return  # another sweeper picks its jobs as it goes: each job validates itself
    jobs = sweep_jobs(config)
    bad, unused = invalid_jobs(config, jobs)
    if bad:
        raise ConfigError(f"{len(bad)} of {len(jobs)} runs of this sweep are invalid, so none "
                          f"was started: " + "; ".join(bad))
    if unused:
        raise ConfigError(f"no run of this sweep uses {unused[0]}: drop it (it would change the "
                          f"runs' names and configs, not what they train)")


class Preflight(Callback):
    """A Hydra callback, so an entry point of its own: its errors end the command here."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_writable(Path(OmegaConf.select(config, "hydra.run.dir")))
        except OmegaConfBaseException as err:  # the run's name resolves an override's ${...}
            raise SystemExit(composition_error(err).show()) from None
        except SweeperError as err:
            raise SystemExit(err.show()) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep(config)
        except OmegaConfBaseException as err:  # the sweep's folder resolves an override's ${...}
            raise SystemExit(composition_error(err).show()) from None
        except SweeperError as err:
            raise SystemExit(err.show()) from None
        if stop.in_workers(config.hydra.launcher):
            stop.Sweep.forward_to_workers(Path(OmegaConf.select(config, "hydra.sweep.dir")))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            stop.Sweep.check()
        except SweeperError as err:
            raise SystemExit(err.show()) from None

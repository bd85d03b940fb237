"""`python -m sweeper ...`: Hydra composes the config, `validate` checks it, `run` does the rest."""

import math
import os
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException, HydraException
from hydra.types import RunMode
from hydra_plugins.sweeper_search import OptunaSweeper
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper.config import composition_error, register_configs, unused_keys, unused_message, validate
from sweeper.errors import ConfigError, SweeperError
from sweeper import stop
from sweeper.help import options_help
from sweeper.records import discard
from sweeper.rundir import override_keys, run_name

register_configs()
Plugins.instance().register(OptunaSweeper)  # an editable install hides it from Hydra's scan
OmegaConf.register_new_resolver("run_name", lambda overrides: run_name(overrides or []))
OmegaConf.register_new_resolver("options_help", options_help)


class JobFailed(CompactHydraException):
    """One job of a sweep failed (its error line is printed already); the others still run."""


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    worker = hydra_cfg.mode == RunMode.MULTIRUN and stop.in_workers(hydra_cfg.launcher)
    if worker and stop.Worker.told_to_stop():
        print(f"run dir: {run_dir} | not started: the sweep is stopping", flush=True)
        discard(run_dir)
        return math.nan
    try:
        overrides = OmegaConf.to_container(hydra_cfg.overrides.task)  # as typed: ${...} unresolved
        settings = validate(cfg)
        unused = unused_keys(settings, override_keys(overrides))
        if unused and hydra_cfg.mode == RunMode.RUN:  # a sweep's keys are checked by preflight
            raise ConfigError(unused_message(settings, unused[0]))
        from sweeper.run import run  # torch loads only once the config is known to be valid

        return run(settings, run_dir, cfg, overrides, hydra_cfg.launcher.get("n_jobs"),
                   trial_judge(hydra_cfg))
    except SweeperError as err:  # the one place a run's error becomes a line and an exit code
        discard(run_dir)
        code = err.show()
        if code and hydra_cfg.mode == RunMode.MULTIRUN:
            raise JobFailed(f"error: run {run_dir} failed (its error is above); "
                            f"the other runs of the sweep went on") from None
        if worker:  # pre-empted: the sweep's main process says so once its workers are done
            return math.nan
        raise SystemExit(code) from None


def trial_judge(hydra_cfg: DictConfig):
    """In a search's trial: the pruner's judge of each epoch (None otherwise)."""
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith(OptunaSweeper.__name__):
        return None
    from sweeper.search import judge_from_env

    return judge_from_env(hydra_cfg.sweeper, Path(hydra_cfg.sweep.dir))


if __name__ == "__main__":
    wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors here, rather than printing
    try:                                   # them in several lines and exiting 1 itself
        main()
    except JobFailed as err:
        print(err, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as err:  # it does not compose
        if wants_trace:
            raise
        raise SystemExit(composition_error(err).show()) from None

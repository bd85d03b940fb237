"""`python -m sweeper ...`: Hydra composes the config, `validate` checks it, `run` does the rest."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError, register_configs, validate
from sweeper.records import fail

register_configs()
# "default" for a run with no overrides; "/" in a value (a data path) must not nest directories.
OmegaConf.register_new_resolver("run_name", lambda overrides: (overrides or "default").replace("/", "_"))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = validate(cfg)
    except ConfigError as err:
        fail(str(err), run_dir)
    from sweeper.run import run  # torch loads only once the config is known to be valid

    return run(settings, run_dir)


if __name__ == "__main__":
    main()

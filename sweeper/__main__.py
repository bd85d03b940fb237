"""`python -m sweeper ...`: Hydra composes the config, `run` does the rest."""

import hydra
from omegaconf import DictConfig, OmegaConf

from sweeper.config import register_configs
from sweeper.run import run

register_configs()
# "default" for a run with no overrides; "/" in a value (a data path) must not nest directories.
OmegaConf.register_new_resolver("run_name", lambda overrides: (overrides or "default").replace("/", "_"))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()

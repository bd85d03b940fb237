"""`python -m sweeper ...`: Hydra composes the config, `run` does the rest."""

import hydra
from omegaconf import DictConfig

from sweeper.config import register_configs
from sweeper.run import run

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()

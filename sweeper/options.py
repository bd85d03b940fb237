"""The contracts of the three config groups' options: a model, a dataset, a task.

An option is a YAML in `conf/<group>/NAME.yaml` whose `_target_` names a dataclass deriving
from the group's base below. That dataclass is the option's schema (its fields are the YAML's
keys, typed), its checks (`check`) and its builder (`build`, `load` or `phases`); nothing else
in the package names it, so a model, dataset or task from outside the package is a module on
the Python path and a YAML on Hydra's search path (`hydra.searchpath=[file://DIR]`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hydra.utils import get_class
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper.errors import ConfigError
from sweeper.records import TaskSpec

if TYPE_CHECKING:
    import torch

    from sweeper.config import Settings
    from sweeper.data.sources import ImageSet
    from sweeper.tasks import Phase


class Encoder(Protocol):
    """What a model builds: images -> one feature vector each. Tasks put their own linear
    heads on `feature_dim` features, so one encoder serves the pretext and the classifier."""

    feature_dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images, normalised -> (N, feature_dim)."""
        ...


@dataclass
class ModelOption:
    """`model=NAME`. `top_level` names the keys it reads from the config's top level instead of
    its own (the ViT's swept shape: `patch=4,8,16 -m`); a model that reads none of them makes
    a command that sets one an error, not a run that ignores it."""

    name: str = MISSING
    top_level: ClassVar[tuple[str, ...]] = ()

    def check(self) -> None:
        """Raise ConfigError (one line: the value and what is allowed) for a value its type
        admits but the model cannot take."""

    def build(self) -> Encoder:
        raise NotImplementedError(f"model={self.name} does not say how to build itself")


@dataclass
class DataOption:
    """`data=NAME`: `load` returns the whole dataset as uint8 (N, 3, 32, 32) images, int64
    labels 0..C-1 and C class names (`ImageSet`); the split keys below are every dataset's."""

    name: str = MISSING
    split_seed: int = 0  # the stratified A/B split of the training set
    b_fraction: float = 0.2  # B's share of each class: 10,000 of CIFAR-10's 50,000
    val_size: int = 0  # images held out of the training set for validation (stratified); 0: none

    def check(self) -> None:
        """As ModelOption.check."""

    def load(self) -> ImageSet:
        raise NotImplementedError(f"data={self.name} does not say how to load itself")


@dataclass
class TaskOption:
    """`task=NAME`: `phases` turns the settings and the images (on the training device) into
    the phases the train loop runs in order. `spec` names them as metrics.csv will: the
    phases, the one whose test figures are the run's result, whether it reads pretrain_epochs."""

    name: str = MISSING
    spec: ClassVar[TaskSpec]

    def check(self) -> None:
        """As ModelOption.check."""

    def phases(self, s: Settings, images: ImageSet) -> list[Phase]:
        raise NotImplementedError(f"task={self.name} does not say what it trains")


GROUPS: dict[str, type] = {"model": ModelOption, "data": DataOption, "task": TaskOption}


def option(group: str, node: dict[str, Any], top: dict[str, Any]) -> Any:
    """The group's option, typed and checked, from its composed `node` (`_target_` included);
    `top` is the config's top level, for the keys a model reads from there."""
    name = node.get("name")
    cls = option_class(group, node)
    top_level = getattr(cls, "top_level", ())
    given = [k for k in top_level if k in node]
    if given:
        raise ConfigError(f"{group}.{given[0]} is not a key of {group}={name}: it is set at the "
                          f"top level, e.g. {given[0]}={node[given[0]]}")
    fields = {k: v for k, v in node.items() if k != "_target_"}
    fields.update({k: top[k] for k in top_level})
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), fields)
        chosen = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = f"{group}.{err.key}" if getattr(err, "key", None) else group
        reason = str(err.msg).splitlines()[0]
        raise ConfigError(f"{key} is not valid for {group}={name}: {reason}") from None
    chosen.check()
    return chosen


def option_class(group: str, node: dict[str, Any]) -> type:
    """The dataclass the option's `_target_` names, which must derive from the group's base."""
    name, target, base = node.get("name"), node.get("_target_"), GROUPS[group]
    if not name:
        raise ConfigError(f"{group} is not chosen: give {group}=NAME (python -m sweeper --help "
                          f"lists the options)")
    if not target:
        raise ConfigError(f"{group}={name} has no _target_: its YAML must name the dataclass "
                          f"that holds its schema and builder (a {base.__name__})")
    try:
        cls = get_class(str(target))
    except Exception as err:  # not importable, or not a class: any error of the user's module
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{group}._target_={target!r} cannot be loaded ({reason}): a "
                          f"{base.__name__} dataclass on the Python path") from None
    if not (dataclasses.is_dataclass(cls) and issubclass(cls, base)):
        raise ConfigError(f"{group}._target_={target!r} is not allowed: a dataclass deriving "
                          f"from sweeper.options.{base.__name__}")
    if base is TaskOption and not isinstance(getattr(cls, "spec", None), TaskSpec):
        raise ConfigError(f"{group}._target_={target!r} is not allowed: a TaskOption whose "
                          f"`spec` (a sweeper.records.TaskSpec) names its phases")
    return cls

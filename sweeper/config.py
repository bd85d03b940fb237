"""The typed schema of every run and `validate`, which turns a composed config into settings.

The top level's dataclass is registered in Hydra's ConfigStore, so a misspelt key or a value of
the wrong type fails while Hydra composes the config. Each group option is typed and checked by
the dataclass its `_target_` names (sweeper/options.py). `validate` checks what a type cannot
and raises `ConfigError` with one line naming the value and what is allowed, before any work.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml
from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, InterpolationResolutionError,
                              OmegaConfBaseException, ValidationError)

from sweeper.errors import ConfigError, not_allowed
from sweeper.options import GROUPS, DataOption, ModelOption, TaskOption, option
from sweeper.records import VIT_SHAPE

IMAGE_SIZE = 32  # CIFAR-10; the synthetic and folder sources are checked against it


SCHEDULES = ("cosine", "linear")
AUGMENTS = ("none", "flip", "crop_flip", "strong")
TTAS = ("none", "flip", "flip_translate")


@dataclass
class Config:
    model: Any = MISSING
    task: Any = MISSING
    data: Any = MISSING
    patch: int = 4
    heads: int = 4
    overlap: str = "none"
    cls_layer: Any = "first"
    epochs: int = 25
    pretrain_epochs: int = 50
    batch_size: int = 256
    eval_batch_size: int = 1000
    tta: str = "none"  # none | flip | flip_translate: also log test figures over more views
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    schedule: str = "cosine"  # after the warm-up: cosine | linear decay to zero
    grad_clip: float = 0.0  # max gradient norm; 0: no clipping
    augment: str = "crop_flip"  # none | flip | crop_flip | strong
    erasing: float = 0.0  # probability of random erasing per training image
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing weight; 0: no Mixup
    cutmix_alpha: float = 0.0  # 0: no CutMix
    mix_until: float = 1.0  # Mixup/CutMix in this leading fraction of a phase's epochs
    drop_path: float = 0.0  # stochastic depth of the ViT's last block (linear from 0 at the first)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp32
    compile: bool = False
    resume: bool = True
    checkpoint_every: float = 60.0
    logger: str = "csv"  # csv (metrics.csv, always written) | tensorboard (also event files)


@dataclass
class Settings:
    """The validated config: plain dataclasses, nothing left to interpolate."""

    model: ModelOption
    task: TaskOption
    data: DataOption
    epochs: int
    pretrain_epochs: int
    batch_size: int
    eval_batch_size: int
    tta: str
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    schedule: str
    grad_clip: float
    augment: str
    erasing: float
    mixup_alpha: float
    cutmix_alpha: float
    mix_until: float
    drop_path: float
    seed: int
    device: str
    precision: str
    compile: bool
    resume: bool
    checkpoint_every: float
    logger: str


def register_configs() -> None:
    """Store the root schema: a misspelt or mistyped top-level key fails while composing.

    Group options are typed by `validate`, by the dataclass their `_target_` names."""
    ConfigStore.instance().store(name="base_config", node=Config)


INT64 = 2**63  # torch's sizes are 64-bit: larger integers would overflow
SEEDS = 2**32  # torch's CPU generator keeps 32 bits of a seed: 1 and 2**32 + 1 draw alike


def _check_numbers(node: Any, prefix: str = "") -> None:
    """Every integer in the config fits in 64 bits (Python's do not need to), and every float
    is finite (a nan learning rate would train nothing and say nothing)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_numbers(v, f"{prefix}{k}.")
    elif isinstance(node, int) and not isinstance(node, bool) and not -INT64 <= node < INT64:
        raise not_allowed(prefix[:-1], node, f"an integer from {-INT64} to {INT64 - 1}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise not_allowed(prefix[:-1], node, "a finite number")


def validate(cfg: DictConfig) -> Settings:
    """Check the composed config and return typed settings, or raise ConfigError."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # an override's ${...} that names nothing
        raise composition_error(err) from None
    _check_numbers(plain)
    unknown = [k for k in plain if k not in GROUPS and k not in Settings.__dataclass_fields__
               and k not in VIT_SHAPE]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a key of this config: see `python -m sweeper "
                          f"--help` for the keys and groups")
    for key in ("erasing", "mix_until"):  # before the options: a model reads drop_path
        if not 0 <= plain[key] <= 1:
            raise not_allowed(key, plain[key], "a number in [0, 1]")
    if not 0 <= plain["drop_path"] < 1:
        raise not_allowed("drop_path", plain["drop_path"], "a number in [0, 1)")
    for group in GROUPS:
        if not isinstance(plain.get(group) or {}, dict):
            raise ConfigError(f"{group} is {plain[group]!r}, not an option: an option's YAML is a "
                              f"mapping of its keys (name, _target_, ...)")
    model, data, task = (option(group, dict(plain.get(group) or {}), plain)
                         for group in ("model", "data", "task"))

    for key in ("epochs", "pretrain_epochs", "batch_size", "eval_batch_size"):
        if plain[key] <= 0:
            raise not_allowed(key, plain[key], "a positive integer")
    if plain["checkpoint_every"] < 0:
        raise not_allowed("checkpoint_every", plain["checkpoint_every"], "zero or more")
    for key, seed in (("seed", plain["seed"]), ("data.split_seed", data.split_seed)):
        if not 0 <= seed < SEEDS:
            raise not_allowed(key, seed, f"an integer from 0 to {SEEDS - 1}")
    if plain["lr"] <= 0:
        raise not_allowed("lr", plain["lr"], "a positive learning rate")
    if plain["weight_decay"] < 0:
        raise not_allowed("weight_decay", plain["weight_decay"], "zero or more")
    if plain["warmup_epochs"] < 0:
        raise not_allowed("warmup_epochs", plain["warmup_epochs"], "zero or more")
    if not 0 <= plain["label_smoothing"] < 1:
        raise not_allowed("label_smoothing", plain["label_smoothing"], "a number in [0, 1)")
    if plain["schedule"] not in SCHEDULES:
        raise not_allowed("schedule", plain["schedule"], " or ".join(SCHEDULES))
    if plain["tta"] not in TTAS:
        raise not_allowed("tta", plain["tta"], ", ".join(TTAS))
    if plain["augment"] not in AUGMENTS:
        raise not_allowed("augment", plain["augment"], ", ".join(AUGMENTS))
    for key in ("grad_clip", "mixup_alpha", "cutmix_alpha"):
        if plain[key] < 0:
            raise not_allowed(key, plain[key], "zero (off) or a positive number")
    if plain["device"] not in ("auto", "cpu", "cuda"):
        raise not_allowed("device", plain["device"], "auto, cpu or cuda")
    if plain["logger"] not in ("csv", "tensorboard"):
        raise not_allowed("logger", plain["logger"], "csv or tensorboard")
    if plain["logger"] == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logger=tensorboard needs TensorBoard, which is not installed: "
                          "pip install -e \".[tensorboard]\"")
    if plain["precision"] not in ("auto", "bf16", "fp32"):
        raise not_allowed("precision", plain["precision"], "auto, bf16 or fp32")

    if data.val_size < 0:
        raise not_allowed("data.val_size", data.val_size, "zero (no validation split) or more images")
    if not 0 < data.b_fraction < 1:
        raise not_allowed("data.b_fraction", data.b_fraction, "a fraction between 0 and 1")

    top = {k: v for k, v in plain.items() if k not in GROUPS and k not in VIT_SHAPE}
    return Settings(model=model, task=task, data=data, **top)


TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "bool": "true or false"}


def composition_error(err: Exception) -> ConfigError:
    """Hydra's and OmegaConf's refusal of a command's overrides (several lines, and for an
    unknown key the advice to add it with +) as one line: the value and what is allowed."""
    cause = err.__cause__ or err
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return ConfigError(f"{mark.name} is not valid YAML: {err.problem} (line {mark.line + 1}, "
                           f"column {mark.column + 1})")
    if isinstance(err, MissingConfigException) and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return not_allowed(group, name, "one of " + ", ".join(err.options))
    if isinstance(err, OverrideParseException):
        return ConfigError(f"cannot read the override {err.override!r}: "
                           f"{err.message.splitlines()[0]} (the grammar: "
                           f"https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.parent_node is not None:
        parent = cause.parent_node
        keys = [k for k in parent if k not in ("_target_", "name", "hydra")]
        close = difflib.get_close_matches(str(cause.key), keys, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        group = cause.full_key.rpartition(".")[0]
        if group and parent.get("name"):  # a group's option: its schema has no such key
            return ConfigError(f"{cause.full_key} is not a key of {group}={parent.get('name')}"
                               f"{hint}: its keys are {', '.join(keys) or 'none'}")
        if group:  # a mapping open to new keys, such as hydra.sweeper.params
            return ConfigError(f"{cause.full_key} is not a key of {group}{hint}: "
                               + (f"its keys are {', '.join(keys)}" if keys else
                                  f"it is empty; add the key with +{cause.full_key}=..."))
        return ConfigError(f"{cause.full_key} is not a key of this config{hint}: see "
                           f"`python -m sweeper --help` for the keys and groups")
    if isinstance(cause, ValidationError) and cause.full_key:
        wanted = re.search(r"converted to (\w+)|not a valid (\w+)", str(cause.msg))
        name = wanted and (wanted.group(1) or wanted.group(2))
        allowed = TYPE_NAMES.get(name, name) if name else str(cause.msg)
        return not_allowed(cause.full_key, cause.value, allowed.splitlines()[0])
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = lines[0] if lines else type(cause).__name__
    sweep = re.match(r"Ambiguous value for argument '(.+)'", reason)
    if sweep:  # the commonest slip: a sweep typed without -m
        return ConfigError(f"{sweep.group(1)} is a sweep: add -m to run one job per value "
                           f"(a list value is written [a,b])")
    no_default = re.match(r"Could not override '(.+)'\. No match in the defaults list", reason)
    if no_default:  # a group the config does not choose by default, such as experiment/
        group = no_default.group(1)
        return ConfigError(f"{group} has no default to override: choose one with +{group}=NAME "
                           f"(`python -m sweeper --help` lists the options)")
    if isinstance(cause, InterpolationResolutionError):  # an override's ${...}
        return ConfigError(f"cannot resolve the config: {reason}")
    return ConfigError(reason)


def unused_keys(s: Settings, keys: Iterable[str]) -> list[str]:
    """Of the keys a command sets, those this run ignores: the ViT's shape with another model,
    the pretext's budget with a task that has no pretext."""
    ignored = {*VIT_SHAPE, "drop_path"} - set(type(s.model).top_level)
    if not type(s.task).spec.pretext:
        ignored.add("pretrain_epochs")
    return [k for k in keys if k in ignored]


def unused_message(s: Settings, key: str) -> str:
    return (f"{key} is not used by model={s.model.name} task={s.task.name}: drop it (it would "
            f"change the run's name and config, not what it trains)")

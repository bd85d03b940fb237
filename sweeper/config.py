"""The typed schema of every run and `validate`, which turns a composed config into settings.

The dataclasses are registered in Hydra's ConfigStore, so a misspelt key or a value of the
wrong type fails while Hydra composes the config. `validate` then checks what a type cannot
(a patch that does not tile the image, a width the heads do not divide, ...) and raises
`ConfigError` with one line naming the value and what is allowed, before any work is done.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper.errors import ConfigError
from sweeper.records import VIT_SHAPE

IMAGE_SIZE = 32  # CIFAR-10; the synthetic and folder sources are checked against it


@dataclass
class ViTConfig:
    """The shape keys (patch, overlap, heads, cls_layer) come from the top level of the config,
    the only place a user sets them."""

    name: str = "vit"
    patch: int = 4
    overlap: str = "none"  # none | half (stride = patch / 2)
    heads: int = 4
    cls_layer: Any = "first"  # first | last | block index 0..depth
    dim: int = 240  # divisible by 4, 6, 8, 10 and 12, so every heads option runs unchanged
    depth: int = 6
    mlp_ratio: float = 2.0
    drop_path: float = 0.0  # from the top-level key (the recipe's): stochastic depth


@dataclass
class ResNetConfig:
    name: str = "resnet18"
    stem: str = "cifar"  # cifar (3x3 stride-1 conv, no max-pool) | imagenet (torchvision's own)


# Every task trains its reported (10-way) phase for the top-level `epochs`; the rotation tasks
# also train the pretext for the top-level `pretrain_epochs` (top-level, so one sweep over tasks
# can set it: Hydra composes a sweep's base config with the default task).
@dataclass
class ClassifyTask:
    name: str = "classify"


@dataclass
class RotationTask:
    name: str = "rotation_pretrain"  # rotation_probe when the encoder is frozen on B
    freeze_encoder: bool = False


@dataclass
class FinetuneTask:
    name: str = "finetune"
    encoder: Optional[str] = None
    freeze_encoder: bool = False


@dataclass
class ScratchTask:
    name: str = "scratch"


@dataclass
class DataBase:
    split_seed: int = 0  # the stratified A/B split of the training set
    b_fraction: float = 0.2  # B's share of each class: 10,000 of CIFAR-10's 50,000
    val_size: int = 0  # images held out of the training set for validation (stratified); 0: none


@dataclass
class Cifar10Data(DataBase):
    name: str = "cifar10"
    root: str = "data"


@dataclass
class FolderData(DataBase):
    name: str = "folder"
    root: Optional[str] = None
    cache_dir: str = "~/.cache/sweeper"


@dataclass
class SyntheticData(DataBase):
    name: str = "synthetic"
    n_train: int = 2000
    n_test: int = 400


SCHEDULES = ("cosine", "linear")
AUGMENTS = ("none", "flip", "crop_flip", "strong")
ModelConfig = Union[ViTConfig, ResNetConfig]
TaskConfig = Union[ClassifyTask, RotationTask, FinetuneTask, ScratchTask]
DataConfig = Union[Cifar10Data, FolderData, SyntheticData]


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

    model: ModelConfig
    task: TaskConfig
    data: DataConfig
    epochs: int
    pretrain_epochs: int
    batch_size: int
    eval_batch_size: int
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


_SCHEMAS = {
    "model": {"vit": ViTConfig, "resnet18": ResNetConfig},
    "task": {
        "classify": ClassifyTask,
        "rotation_pretrain": RotationTask,
        "rotation_probe": RotationTask,
        "finetune": FinetuneTask,
        "scratch": ScratchTask,
    },
    "data": {"cifar10": Cifar10Data, "folder": FolderData, "synthetic": SyntheticData},
}


def register_configs() -> None:
    """Store the root schema: a misspelt or mistyped top-level key fails while composing.

    Group options are typed by `validate` (their schema depends on the option chosen)."""
    ConfigStore.instance().store(name="base_config", node=Config)


def _allowed(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not allowed: {allowed}")


def cls_block(model: ViTConfig) -> int:
    """The block index the CLS token joins before (`depth` means after the last block)."""
    if model.cls_layer == "first":
        return 0
    if model.cls_layer == "last":
        return model.depth
    return int(model.cls_layer)


def patch_stride(model: ViTConfig) -> int:
    return model.patch // 2 if model.overlap == "half" else model.patch


def _validate_vit(m: ViTConfig) -> None:
    if m.overlap not in ("none", "half"):
        raise _allowed("overlap", m.overlap, "none or half")
    if m.patch <= 0 or m.patch > IMAGE_SIZE:
        raise _allowed("patch", m.patch, f"a patch side from 1 to {IMAGE_SIZE}")
    if m.overlap == "half" and m.patch % 2:
        raise _allowed("patch", m.patch, "an even patch side with overlap=half")
    stride = patch_stride(m)
    if (IMAGE_SIZE - m.patch) % stride:
        raise _allowed(
            "patch",
            m.patch,
            f"patches of side {m.patch} with stride {stride} must tile the "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} image exactly (try 4, 8 or 16)",
        )
    if m.depth <= 0:
        raise _allowed("model.depth", m.depth, "a positive number of blocks")
    if m.heads <= 0:
        raise _allowed("heads", m.heads, "a positive number of attention heads")
    if m.dim <= 0 or m.dim % m.heads:
        raise _allowed("model.dim", m.dim, f"a positive width divisible by heads={m.heads}")
    if m.mlp_ratio <= 0:
        raise _allowed("model.mlp_ratio", m.mlp_ratio, "a positive number")
    cls = m.cls_layer
    if not (cls in ("first", "last")
            or (isinstance(cls, int) and not isinstance(cls, bool) and 0 <= cls <= m.depth)):
        raise _allowed("cls_layer", cls, f"first, last or a block index from 0 to {m.depth}")


INT64 = 2**63  # torch's sizes are 64-bit: larger integers would overflow
SEEDS = 2**32  # torch's CPU generator keeps 32 bits of a seed: 1 and 2**32 + 1 draw alike


def _check_numbers(node: Any, prefix: str = "") -> None:
    """Every integer in the config fits in 64 bits (Python's do not need to), and every float
    is finite (a nan learning rate would train nothing and say nothing)."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_numbers(v, f"{prefix}{k}.")
    elif isinstance(node, int) and not isinstance(node, bool) and not -INT64 <= node < INT64:
        raise _allowed(prefix[:-1], node, f"an integer from {-INT64} to {INT64 - 1}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise _allowed(prefix[:-1], node, "a finite number")


def validate(cfg: DictConfig) -> Settings:
    """Check the composed config and return typed settings, or raise ConfigError."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    _check_numbers(plain)
    unknown = [k for k in plain if k not in _SCHEMAS and k not in Settings.__dataclass_fields__
               and k not in VIT_SHAPE]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a key of this config: see `python -m sweeper "
                          f"--help` for the keys and groups")
    if isinstance(plain.get("model"), dict) and plain["model"].get("name") == "vit":
        given = [k for k in (*VIT_SHAPE, "drop_path") if k in plain["model"]]
        if given:
            what = "stochastic depth is" if given[0] == "drop_path" else "the ViT's shape is"
            raise ConfigError(f"model.{given[0]} is not a key: {what} set at the top level, "
                              f"e.g. {given[0]}={plain['model'][given[0]]}")
        plain["model"].update({k: plain[k] for k in (*VIT_SHAPE, "drop_path")})
    groups = {}
    for group, options in _SCHEMAS.items():
        node = plain.get(group) or {}
        name = node.get("name")
        if name not in options:
            raise _allowed(group, name, ", ".join(options))
        try:
            merged = OmegaConf.merge(OmegaConf.structured(options[name]), node)
        except OmegaConfBaseException as err:
            key = f"{group}.{err.key}" if getattr(err, "key", None) else group
            reason = str(err.msg).splitlines()[0]
            raise ConfigError(f"{key} is not valid for {group}={name}: {reason}") from None
        groups[group] = OmegaConf.to_object(merged)

    model, task, data = groups["model"], groups["task"], groups["data"]
    if isinstance(model, ViTConfig):
        _validate_vit(model)
    elif model.stem not in ("cifar", "imagenet"):
        raise _allowed("model.stem", model.stem, "cifar or imagenet")

    for key in ("epochs", "pretrain_epochs", "batch_size", "eval_batch_size"):
        if plain[key] <= 0:
            raise _allowed(key, plain[key], "a positive integer")
    if isinstance(task, RotationTask):
        task.name = "rotation_probe" if task.freeze_encoder else "rotation_pretrain"
    if plain["checkpoint_every"] < 0:
        raise _allowed("checkpoint_every", plain["checkpoint_every"], "zero or more")
    for key, seed in (("seed", plain["seed"]), ("data.split_seed", data.split_seed)):
        if not 0 <= seed < SEEDS:
            raise _allowed(key, seed, f"an integer from 0 to {SEEDS - 1}")
    if plain["lr"] <= 0:
        raise _allowed("lr", plain["lr"], "a positive learning rate")
    if plain["weight_decay"] < 0:
        raise _allowed("weight_decay", plain["weight_decay"], "zero or more")
    if plain["warmup_epochs"] < 0:
        raise _allowed("warmup_epochs", plain["warmup_epochs"], "zero or more")
    if not 0 <= plain["label_smoothing"] < 1:
        raise _allowed("label_smoothing", plain["label_smoothing"], "a number in [0, 1)")
    if plain["schedule"] not in SCHEDULES:
        raise _allowed("schedule", plain["schedule"], " or ".join(SCHEDULES))
    if plain["augment"] not in AUGMENTS:
        raise _allowed("augment", plain["augment"], ", ".join(AUGMENTS))
    for key in ("grad_clip", "mixup_alpha", "cutmix_alpha"):
        if plain[key] < 0:
            raise _allowed(key, plain[key], "zero (off) or a positive number")
    for key in ("erasing", "mix_until"):
        if not 0 <= plain[key] <= 1:
            raise _allowed(key, plain[key], "a number in [0, 1]")
    if not 0 <= plain["drop_path"] < 1:
        raise _allowed("drop_path", plain["drop_path"], "a number in [0, 1)")
    if plain["device"] not in ("auto", "cpu", "cuda"):
        raise _allowed("device", plain["device"], "auto, cpu or cuda")
    if plain["logger"] not in ("csv", "tensorboard"):
        raise _allowed("logger", plain["logger"], "csv or tensorboard")
    if plain["logger"] == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logger=tensorboard needs TensorBoard, which is not installed: "
                          "pip install -e \".[tensorboard]\"")
    if plain["precision"] not in ("auto", "bf16", "fp32"):
        raise _allowed("precision", plain["precision"], "auto, bf16 or fp32")

    if isinstance(task, FinetuneTask):
        if not task.encoder:
            raise _allowed("task.encoder", task.encoder, "the path of a saved encoder.pt")
        if not Path(task.encoder).expanduser().is_file():
            raise _allowed("task.encoder", task.encoder, "an existing encoder.pt file")
    if isinstance(data, FolderData):
        _validate_folder_root(data.root)
    if data.val_size < 0:
        raise _allowed("data.val_size", data.val_size, "zero (no validation split) or more images")
    if not 0 < data.b_fraction < 1:
        raise _allowed("data.b_fraction", data.b_fraction, "a fraction between 0 and 1")
    if isinstance(data, SyntheticData):
        for key in ("n_train", "n_test"):
            if getattr(data, key) < 10:
                raise _allowed(f"data.{key}", getattr(data, key), "at least 10 images")

    top = {k: v for k, v in plain.items() if k not in _SCHEMAS and k not in VIT_SHAPE}
    return Settings(model=model, task=task, data=data, **top)


def unused_keys(s: Settings, keys: Iterable[str]) -> list[str]:
    """Of the keys a command sets, those this run ignores: the ViT's shape with another model,
    the pretext's budget with a task that has no pretext."""
    ignored = set()
    if not isinstance(s.model, ViTConfig):
        ignored.update((*VIT_SHAPE, "drop_path"))
    if not isinstance(s.task, RotationTask):
        ignored.add("pretrain_epochs")
    return [k for k in keys if k in ignored]


def unused_message(s: Settings, key: str) -> str:
    return (f"{key} is not used by model={s.model.name} task={s.task.name}: drop it (it would "
            f"change the run's name and config, not what it trains)")


def _validate_folder_root(root: Optional[str]) -> None:
    allowed = "a directory (or .tar.gz of one) holding train/<class>/ and test/<class>/"
    if not root:
        raise _allowed("data.root", root, allowed)
    path = Path(root).expanduser()
    if not path.exists():
        raise _allowed("data.root", root, f"{allowed}; it does not exist")
    if path.is_dir() and not ((path / "train").is_dir() and (path / "test").is_dir()):
        raise _allowed("data.root", root, f"{allowed}; train/ or test/ is missing")
    if path.is_file() and not path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise _allowed("data.root", root, allowed)

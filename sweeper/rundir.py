"""A run's directory: its name, made from the overrides, and the config it was trained with.

The name is what lets the same command find its runs again, so it holds exactly the overrides
that can change a run's results: the last value of each key (as Hydra applies them), sorted;
no key that cannot change results; a data path as its base name plus a short hash of the
resolved path; and a hash in place of the tail of a name too long for a file system.

`.hydra/config.yaml` is written by the run itself, once, when the directory is new (Hydra's own
copy is switched off, since Hydra would overwrite it on every rerun). A rerun compares it with
its own config and refuses a directory trained with different values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from sweeper.atomic import atomic_write_text
from sweeper.errors import RunFileError
from sweeper.records import CONFIG_DIR, CONFIG_FILE

# Keys that change where or how a run is kept, never what it computes.
NOT_RESULTS = ("resume", "data.cache_dir", "checkpoint_every", "logger")
PATH_KEYS = ("data.root", "task.encoder")
# Where an option's code lives (older runs have no such key): its `name` says which option it is.
TARGET = "._target_"
# Keys added after runs were made, at the value that trains as those runs did: a stored config
# without the key compares equal to this value.
ADDED = {"data.val_size": 0, "schedule": "cosine", "grad_clip": 0.0, "augment": "crop_flip",
         "erasing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_until": 1.0,
         "drop_path": 0.0}
MAX_NAME_BYTES = 200  # file systems allow 255 per path component; leave room for suffixes


def _short_hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The keys a list of overrides sets (`+x=1` sets x), in order."""
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return [o.get_key_element().lstrip("+") for o in parsed if not o.is_delete()]


def run_name(overrides: Iterable[str]) -> str:
    """`patch=8 heads=4 ...` (one job's overrides) -> `heads-4+patch-8`, or `default`.
    Overrides are read with Hydra's own grammar, so an escaped value (a sweep job's `my\\ data`)
    names the same directory as the plain one."""
    last: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides([str(o) for o in overrides]):
        key = override.get_key_element().lstrip("+")
        if override.is_delete() or key in NOT_RESULTS:
            continue
        value = override.get_value_element_as_str()
        if key in PATH_KEYS and override.value() is not None:
            path = Path(str(override.value())).expanduser()
            value = f"{path.name}-{_short_hash(str(path.resolve()), 6)}"
        last.pop(key, None)
        last[key] = value
    name = "+".join(f"{k}-{v}" for k, v in sorted(last.items())).replace("/", "_") or "default"
    if len(name.encode()) > MAX_NAME_BYTES:
        name = name.encode()[: MAX_NAME_BYTES - 11].decode(errors="ignore") + "~" + _short_hash(name, 10)
    return name


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"dim": 240}} -> {"model.dim": 240}: a config as its dotted keys."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


MAX_CONFIG_BYTES = 1 << 20  # a run's config is a few kB


class ConfigFileError(RunFileError):
    """A stored config that a run could not have written: too large, not YAML, or with YAML
    aliases, which a run never writes and which can expand without bound ("billion laughs")."""


def load_config_file(path: Path) -> dict[str, Any]:
    """A run's `.hydra/config.yaml`, flat and resolved, read within bounds."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"{CONFIG_DIR}/config.yaml is larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_bytes().decode()
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ConfigFileError(f"{CONFIG_DIR}/config.yaml has YAML aliases, which no run writes")
        config = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    except ConfigFileError:
        raise
    except Exception as err:  # not text, not YAML, or an interpolation that does not resolve
        raise ConfigFileError(f"unreadable {CONFIG_DIR}/config.yaml ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise ConfigFileError(f"{CONFIG_DIR}/config.yaml is not a mapping of keys")
    return flatten(config)


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The flat, resolved config the run dir was trained with, or None for a new directory."""
    path = run_dir / CONFIG_DIR / CONFIG_FILE
    if not path.is_file():
        return None
    return load_config_file(path)


def config_changes(run_dir: Path, cfg: DictConfig, unused: Iterable[str] = ()) -> list[str]:
    """Keys whose stored value differs from `cfg`, leaving aside keys that cannot change
    results and the keys this run does not use (`unused`, e.g. pretrain_epochs for a ViT)."""
    old = stored_config(run_dir)
    if old is None:
        return []
    new = flatten(OmegaConf.to_container(cfg, resolve=True))
    skip = set(NOT_RESULTS) | set(unused)
    keys = sorted(set(old) | set(new))
    old = {**ADDED, **old}
    return [f"{k} ({old.get(k, 'absent')!r} -> {new.get(k, 'absent')!r})" for k in keys
            if k not in skip and not k.endswith(TARGET) and old.get(k, "absent") != new.get(k, "absent")]


def store_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """Write the run's resolved config and overrides (once per run; never over another's)."""
    folder = run_dir / CONFIG_DIR
    atomic_write_text(folder / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))

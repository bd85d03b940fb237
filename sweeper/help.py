"""`python -m sweeper --help`: every option of every group, with its keys and defaults, read
from the option files themselves (the package's conf/ and each `hydra.searchpath` folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "data", "task", "recipe")
HIDDEN = ("_target_", "defaults")


def _folders(searchpath: Iterable[Any]) -> list[Path]:
    extra = [str(p).removeprefix("file://") for p in searchpath or () if "://" not in str(p)
             or str(p).startswith("file://")]
    return [CONF, *(Path(p).expanduser() for p in extra)]


def _keys(path: Path, group: str) -> str:
    try:
        node = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        return f"(unreadable: {type(err).__name__})"
    if group in ("task", "model", "data") and isinstance(node.get(group), dict):
        node = node[group]  # a @package _global_ option keeps its keys under the group
    if not isinstance(node, dict):
        return ""
    return " ".join(f"{k}={_value(v)}" for k, v in node.items()
                    if k not in HIDDEN and not (k == "name" and v == path.stem))


def _value(v: Any) -> str:
    return "null" if v is None else str(v).replace(" ", "")


def options_help(searchpath: Iterable[Any] = ()) -> str:
    lines = []
    for group in GROUPS:
        found: dict[str, Path] = {}
        for folder in _folders(searchpath):
            for path in sorted((folder / group).glob("*.yaml")):
                found.setdefault(path.stem, path)
        for name, path in sorted(found.items()):
            lines.append(f"{group}={name}: {_keys(path, group)}".rstrip(": "))
    return "\n".join(lines)

"""`pip install .` (no extras) brings every library the package imports when it loads, so the
three commands work on a core install; extras are needed only by the options that name them."""

import ast
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers.commands import ROOT

# Loaded only by the option that names its extra (hparams_search=... imports sweeper.search).
OPTIONAL = {"sweeper/search.py": "search"}


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements install, extras left out, as pip would resolve it."""
    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in requires(req.name) or []]
        except PackageNotFoundError:  # not installed here: a test would fail on its import anyway
            pass
    return seen


def _module_level_imports(path) -> set[str]:
    """Top-level names of the modules a file imports when it is loaded: the statements of its
    body; imports in functions, `if TYPE_CHECKING:` and `try:` fallbacks are not load-time needs."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_a_core_install_brings_every_library_the_package_loads():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _closure(project["dependencies"])
    provider = packages_distributions()
    missing = []
    for path in sorted([*(ROOT / "sweeper").rglob("*.py"), *(ROOT / "analysis").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for module in _module_level_imports(path) - set(sys.stdlib_module_names):
            if module in ("sweeper", "analysis", "hydra_plugins"):
                continue
            dists = {canonicalize_name(d) for d in provider.get(module, [module])}
            if rel in OPTIONAL:
                extra = project["optional-dependencies"][OPTIONAL[rel]]
                if dists & _closure(extra):
                    continue
            if not dists & core:
                missing.append(f"{rel} imports {module}")
    assert not missing, "not installed by [project].dependencies: " + "; ".join(missing)

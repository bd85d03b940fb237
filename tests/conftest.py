"""Fixtures shared by the tests; the helpers they use are in tests/helpers/."""

from __future__ import annotations

import pytest

from helpers.commands import SLOW, TINY, ok, scores, sweeper


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> list[list[str]]:
    """The scores of SLOW run once without interruption: what every resumed run must match."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    ok(sweeper(*SLOW, f"hydra.run.dir={run_dir}"))
    return scores(run_dir)

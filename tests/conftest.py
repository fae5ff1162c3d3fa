"""Shared test helpers: where the real fusion data and the bundled samples live.

`SHARED_DATA` is the folder of real datasets (README: IVF/RoadScene, MEF/MEFB, MFF/MFIFB,
MIF/Harvard-*): the environment variable ADARAY_SHARED_DATA, else `<repo>/../shared/data/fusion`.
Tests that need it take the `shared_data` fixture (and carry the `shared_data` marker); they are
skipped, with the reason, only where that folder is absent. Tests that start Ray, MLflow servers
or Serve are marked `slow`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA: Path = Path(
    os.environ.get("ADARAY_SHARED_DATA", REPO.parent / "shared" / "data" / "fusion")
).resolve()
SAMPLES: Path = REPO / "samples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real fusion data not found at {SHARED_DATA} (set ADARAY_SHARED_DATA)")
    return SHARED_DATA


# One real Ray cluster for the whole session (tests/ray_cluster.py): the session fixture
# `ray_cluster` starts it on first use only, so tests that do not ask for it never start Ray.
from ray_cluster import ray_cluster  # noqa: E402, F401

# Tests that start a Ray cluster, an MLflow server or a Serve app are `slow`: those that take
# one of these fixtures are marked here, the others that start one themselves carry the mark in
# their module. `pytest -m "not slow"` runs the unit tests alone.
SLOW_FIXTURES = frozenset({"ray_cluster", "served", "server", "mlflow_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# Interpreter teardown after a session that imported torch, Ray (its gRPC core worker) and
# MLflow can crash in native destructors once every test has passed (CI saw SIGSEGV after
# "257 passed"). Everything the tests started is stopped by their fixtures before this point,
# so the process leaves with pytest's own exit status as soon as pytest is done, skipping the
# native teardown.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_cluster import POLL_ENV, RayTestCluster
from s3_server import S3Server, start_s3_server
from wheel_venv import InstalledWheel, install_wheel

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA: Path = Path(
    os.environ.get("ADARAY_SHARED_DATA", REPO.parent / "shared" / "data" / "fusion")
).resolve()
SAMPLES: Path = REPO / "samples"

# Demos and CLIs that tests run on their own local Ray poll their Train workers as often as the
# session cluster does (ray_cluster.POLL_ENV): at Ray's default 2 s each short run waits about
# 4 s longer to finish (`adaray train`, tiny config, 10 steps: 28.7-29.2 s against 22.3-25.2 s).
for _key, _value in POLL_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real fusion data not found at {SHARED_DATA} (set ADARAY_SHARED_DATA)")
    return SHARED_DATA


# A real S3 API for the whole session (tests/s3_server.py, moto_server on loopback): the bucket
# `fusion` holds the bundled samples under `samples/`. Its endpoint and test credentials are in
# this process's environment while it runs, so the Ray cluster below, started after it, passes
# them to every node, as instance roles or node environments do on a real cluster.
S3_BUCKET = "fusion"
S3_SAMPLES = f"s3://{S3_BUCKET}/samples"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's S3 server (started on first use) with the samples uploaded."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        with server.activate():
            server.create_bucket(S3_BUCKET)
            server.upload_tree(SAMPLES, S3_SAMPLES)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server) -> Iterator[RayTestCluster]:
    """The session's two-node Ray cluster (tests/ray_cluster.py), started by the first test
    that asks for it, with the S3 server's settings in every node's environment."""
    cluster = RayTestCluster().start()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """This checkout's wheel in a fresh venv (tests/wheel_venv.py), built on first use."""
    return install_wheel(REPO, tmp_path_factory.mktemp("wheel"))


# Tests that start a Ray cluster, an MLflow server or a Serve app, or install the wheel, are
# `slow`: those that take one of these fixtures are marked here, the others that start one
# themselves carry the mark in their module. `pytest -m "not slow"` runs the unit tests alone.
SLOW_FIXTURES = frozenset({"ray_cluster", "served", "server", "mlflow_server",
                           "installed_wheel"})


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

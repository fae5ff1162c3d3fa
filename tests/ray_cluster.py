"""One real Ray cluster for the whole test session: two nodes on this host, dashboard on.

    def test_something(ray_cluster):       # session fixture (conftest.py), started on first use
        with ray_cluster.driver():          # this process joins as a driver, leaves at the end
            build_trainer(cfg, run).fit()
        subprocess.run([...], env=ray_cluster.env())   # other drivers / `ray job submit`

`RayTestCluster.start()` runs `ray.cluster_utils.Cluster`: a head node (2 CPUs, dashboard on a
free loopback port) and a second node (2 CPUs), so SPREAD placement finds two node ids. Auth is
off (`RAY_AUTH_MODE=disabled`, set in os.environ for the session so every Ray process and
subprocess inherits it), and so is a random bearer token (SERVE_TOKEN_ENV). Ray's temp root
is a private folder (`RAY_TMPDIR`): the cluster never
writes /tmp/ray/ray_current_cluster, so a plain `ray.init()` elsewhere on this host (another
engineer's tests) cannot join it by accident. `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S` defaults to
0.5 s for the session (see POLL_ENV). All of these are restored when the session ends.

`shutdown()` stops exactly what `start()` started (the nodes' processes and their
descendants: raylets, GCS, dashboard, agents, workers), then checks that none of them is left,
SIGKILLs any straggler by pid and raises naming them. This module imports ray only when a
cluster starts, so conftest.py can import the fixture at no cost to sessions that never use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["SERVE_TOKEN_ENV", "RayTestCluster", "free_port",
           "latest_checkpoint_step", "own_ray_process", "ray_processes", "wait_for"]

CPUS_PER_NODE = 2
SESSION_ENV = {"RAY_AUTH_MODE": "disabled"}
# A bearer token in the environment the nodes start with, as a deployment exports it where its
# Ray nodes start: Serve apps with `auth_token_env: ADARAY_TEST_SERVE_TOKEN` read it there.
SERVE_TOKEN_ENV = "ADARAY_TEST_SERVE_TOKEN"
# Ray Train V2's controller takes one report per worker per poll (a queue of size 1), polling
# every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s): a loop whose report interval is shorter
# blocks in ray.train.report (bench/train.py: the tiny config runs 5x slower than a bare loop at
# 2 s, as fast at 0.2 s). Tests poll every 0.5 s unless the variable is already set.
# The driver propagates it to the controller.
POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# The GCS declares a node dead after 5 failed health checks, 1 s apart with 2 s timeouts
# (about 5-10 s; Ray's defaults take 15-65 s), so the elastic test's lost node is noticed soon.
NODE_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                      "health_check_failure_threshold": 5}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses; split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(roots: set[int]) -> set[int]:
    children = _children_map()
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _pids_mentioning(text: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def process_alive(pid: int) -> bool:
    """True for a running process (zombies, already dead but not reaped, count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _describe(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = "?"
    return f"{pid} {cmd[:120]}"


def ray_processes(ray_tmp: str) -> list[int]:
    """Live processes of the Ray whose temp root is `ray_tmp`."""
    return [p for p in _pids_mentioning(ray_tmp) if process_alive(p)]


@contextlib.contextmanager
def own_ray_process(command: list[str], log: Path, prefix: str,
                    cwd: Path | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `command`, a process that starts its own local Ray, with a private RAY_TMPDIR and
    without RAY_ADDRESS or MLFLOW_TRACKING_URI; output goes to `log`. Yields (process, Ray temp
    root). On exit the process group and any process of that Ray still alive are killed and
    the temp root removed."""
    ray_tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray socket paths
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI")}
    env["RAY_TMPDIR"] = ray_tmp
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        yield process, ray_tmp
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in _pids_mentioning(ray_tmp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_for(condition: Any, timeout: float, interval: float = 0.25,
             what: str = "condition") -> Any:
    """Poll `condition()` until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:.0f} s")
        time.sleep(interval)


def latest_checkpoint_step(run_dir: str | Path) -> int | None:
    """Step of the latest checkpoint Ray Train registered for a run (its snapshot), or None."""
    path = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        snapshot = json.loads(path.read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):  # absent, half-written or no checkpoint
        return None


class RayTestCluster:
    """A two-node `ray.cluster_utils.Cluster` on this host; see the module docstring."""

    def __init__(self) -> None:
        self.cluster: Any = None
        self.root: Path | None = None  # private RAY_TMPDIR; Ray's temp dir is root/"ray"
        self.address = ""  # GCS address host:port (RAY_ADDRESS for drivers)
        self.dashboard_url = ""  # http://127.0.0.1:PORT (ray job submit, State API)
        self._saved_env: dict[str, str | None] = {}

    @property
    def temp_dir(self) -> Path:
        assert self.root is not None
        return self.root / "ray"

    @property
    def session_dir(self) -> Path:
        return self.temp_dir / "session_latest"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that joins this cluster (a driver, `ray job ...`)."""
        return {**os.environ, **SESSION_ENV, "RAY_ADDRESS": self.address,
                "RAY_TMPDIR": str(self.root), **extra}

    def start(self) -> RayTestCluster:
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise RuntimeError("ray is already initialized in this process; the session "
                               "cluster must start first")
        # Short path: Ray's unix socket paths must stay under ~107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="adaray-rt-", dir="/tmp"))
        self.temp_dir.mkdir()
        poll = {k: os.environ.get(k, v) for k, v in POLL_ENV.items()}
        token = {SERVE_TOKEN_ENV: secrets.token_urlsafe(24)}
        for key, value in {**SESSION_ENV, **poll, **token, "RAY_TMPDIR": str(self.root)}.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        port = free_port()
        try:
            self.cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": CPUS_PER_NODE, "include_dashboard": True,
                                "dashboard_host": "127.0.0.1", "dashboard_port": port,
                                "temp_dir": str(self.temp_dir),
                                "_system_config": NODE_HEALTH_CHECKS})
            self.cluster.add_node(num_cpus=CPUS_PER_NODE, temp_dir=str(self.temp_dir))
            self.cluster.wait_for_nodes()
            self.address = self.cluster.address
            self.dashboard_url = f"http://127.0.0.1:{port}"
            self._wait_for_dashboard()
        except BaseException:
            self.shutdown(check=False)
            raise
        return self

    def _wait_for_dashboard(self, timeout: float = 60.0) -> None:
        import urllib.request

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, timeout, what=f"dashboard at {self.dashboard_url}")

    def _node_pids(self) -> set[int]:
        pids: set[int] = set()
        if self.cluster is None:
            return pids
        for node in self.cluster.list_all_nodes():
            for infos in node.all_processes.values():
                for info in infos:
                    if info.process is not None:
                        pids.add(info.process.pid)
        return pids

    def kill_worker_node(self) -> str:
        """SIGKILL every process of the non-head node, its raylet included, as a lost machine
        goes (no graceful shutdown); returns its node id. Its workers go with it."""
        node = next(iter(self.cluster.worker_nodes))
        roots = {info.process.pid for infos in node.all_processes.values() for info in infos
                 if info.process is not None}
        for pid in _descendants(roots):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.cluster.remove_node(node, allow_graceful=False)  # reaps them, forgets the node
        return node.node_id

    def add_worker_node(self) -> str:
        """Start a new non-head node (as a replaced machine rejoins); returns its node id."""
        return self.cluster.add_node(num_cpus=CPUS_PER_NODE, temp_dir=str(self.temp_dir)).node_id

    def reset_autoscaling_coordinator(self) -> None:
        """Replace Ray's autoscaling coordinator with a fresh one on the head node (this process
        must be connected; its driver runs there).

        Every Ray Train run reserves its workers' resources in this detached actor at high
        priority and cancels the reservation when its controller shuts down; a controller that
        is killed instead (an earlier test's driver that exited mid-run) leaves it for 180 s, and
        an elastic run sizes itself from what is left. The new coordinator has no reservations,
        and on the head node it survives the loss of the worker node.
        """
        import ray
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        def coordinator() -> Any:
            try:
                return ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
            except ValueError:  # none (any more)
                return None

        if (old := coordinator()) is not None:
            ray.kill(old, no_restart=True)
            wait_for(lambda: coordinator() is None, 30, what="the old autoscaling coordinator")
        ray.get(get_or_create_autoscaling_coordinator().get_reserved_resources.remote("-"))

    def node_ids(self) -> list[str]:
        """Ids of the live nodes (this process must be connected)."""
        import ray

        return [n["NodeID"] for n in ray.nodes() if n["Alive"]]

    def live_actors(self, class_name: str) -> list[Any]:
        """The cluster's ALIVE actors of a class (State API through the dashboard)."""
        from ray.util.state import list_actors

        return list_actors(address=self.dashboard_url,
                           filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])

    @contextlib.contextmanager
    def driver(self, runtime_env: dict[str, Any] | None = None) -> Iterator[None]:
        """This process as a driver of the cluster for the block (ray.init, then ray.shutdown),
        so later tests that start their own Ray in this process are not affected."""
        import ray

        if ray.is_initialized():
            raise RuntimeError("ray is already initialized in this process")
        ray.init(address=self.address, logging_level="WARNING", runtime_env=runtime_env)
        try:
            yield
        finally:
            ray.shutdown()

    def shutdown(self, check: bool = True) -> None:
        """Stop the cluster; with `check`, raise if any of its processes outlived it."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        started = _descendants(self._node_pids())
        if self.root is not None:
            started |= _pids_mentioning(str(self.root))
        started.discard(os.getpid())
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()
        deadline = time.monotonic() + 15
        while any(process_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(p for p in started if process_alive(p))
        described = [_describe(p) for p in left]
        for pid in left:  # only processes of this cluster (descendants of its nodes)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self.root is not None and not left:
            shutil.rmtree(self.root, ignore_errors=True)
        self.cluster = None
        if check and left:
            raise RuntimeError("Ray processes outlived the test cluster (killed now): "
                               + "; ".join(described))

"""Start and stop a real `mlflow server` on loopback for tests.

    from mlflow_server import start_mlflow_server   # tests/ is on sys.path under pytest

    with start_mlflow_server(tmp_path) as server:   # ready when this returns (~6-12 s)
        tracker = Tracker(server.uri, "adaray-test")

The server keeps its runs in `<tmp_dir>/mlflow.db` and proxies artifacts (`--serve-artifacts`)
into `<tmp_dir>/mlartifacts`, or into `artifacts_destination` (an `s3://` URI: the server's S3
client reads AWS_ENDPOINT_URL and the credentials from the environment), so clients upload and
download them over HTTP, as a remote client would. `server.stop()` then `server.start()`
restarts it on the same store and port: that is how tests simulate a tracking outage and its
recovery. `stop()` ends exactly the process group it started (the `mlflow` CLI and its uvicorn
worker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ray_cluster import free_port

__all__ = ["MlflowServer", "start_mlflow_server"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member exists but is not ours to signal (cannot happen here)
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class MlflowServer:
    """An `mlflow server` on 127.0.0.1:`port` keeping its store in `root`; `.uri` is its URL.

    `stop()` ends it; `start()` runs it again on the same store and port (an outage and its
    recovery, as seen by clients). A context manager that stops the server on exit.
    """

    def __init__(self, root: Path, port: int, artifacts_destination: str | None = None) -> None:
        self.root = root
        self.port = port
        self.artifacts_destination = artifacts_destination or str(root / "mlartifacts")
        self.uri = f"http://127.0.0.1:{port}"
        self.log_path = root / f"mlflow-server-{port}.log"
        self.process: subprocess.Popen | None = None

    def log_tail(self, chars: int = 4000) -> str:
        """The last `chars` characters of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until GET /health answers.

        Raises RuntimeError with the server's log when it exits early or is not healthy
        within `timeout` seconds (the process group is stopped first).
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"mlflow server on port {self.port} is already running")
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        # No job runner: it spawns seven huey consumers (slow start, CPU) that tests never use.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.root, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"mlflow server exited with code {code}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server on port {self.port} not healthy after {timeout:.0f} s;"
                           f" log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, wait up to `timeout` s, then SIGKILL what is left.

        A no-op when it is not running.
        """
        if self.process is None:
            return
        pgid = self.process.pid  # started with start_new_session: its pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            self.process.poll()  # reap the leader so it stops counting as a member
            time.sleep(0.1)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mlflow_server(tmp_dir: Path, port: int | None = None, timeout: float = 60.0,
                        artifacts_destination: str | None = None) -> MlflowServer:
    """Start `mlflow server` (1 worker) on 127.0.0.1 and return it once GET /health answers.

    Store: `<tmp_dir>/mlflow.db`, artifacts: `artifacts_destination` (default
    `<tmp_dir>/mlartifacts`), log:
    `<tmp_dir>/mlflow-server-<port>.log`. `port` defaults to a free one. Raises RuntimeError
    with the server's log when it exits early or is not healthy within `timeout` seconds.
    """
    root = Path(tmp_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(root, port or free_port(), artifacts_destination)
    server.start(timeout)
    return server


def all_artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (paths inside the run), folders walked."""
    files = []
    for info in client.list_artifacts(run_id, path):
        files.extend(all_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return files

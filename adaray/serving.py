"""What the Serve app (serve/app.py) needs that is not Ray Serve: its config, request checks with
HTTP status codes, and model loading by task.

`ServeConfig` is the `args:` of the app in serve/config.yaml. `RequestError` carries the status
and the human-readable reason of a refused request; the app turns it into `{"error": reason}`.
Decoding uses `adaray.data.decode_image` and fusing `adaray.fusion.fuse_batch`, the same code as
`adaray fuse`, so a served result equals the local one for the same model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaray import REPO_ROOT
from adaray.config import ConfigError, from_dict, read_yaml
from adaray.data.io import ImageReadError, decode_image
from adaray.errors import AdarayError
from adaray.tasks import TASKS

OUTPUTS = ("png", "json")


@dataclass
class ServeConfig:
    """The Serve app's settings (serve/config.yaml `args:`); see README "Serve"."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # tasks served
    # task -> model source: a model file / checkpoint folder, runs:/ID/model or models:/NAME@ALIAS
    # (default for a task not listed: models:/adasffuse-<task>@champion, and while no champion
    # is registered, the shipped models/<task>.pt).
    models: dict[str, str] = field(default_factory=dict)
    max_pixels: int = 4096 * 4096  # larger sources are refused (413)
    max_batch_size: int = 8  # requests of one task and size fused in one forward pass
    batch_wait_timeout_s: float = 0.02  # how long a batch waits to fill
    max_models_per_replica: int = 2  # LRU of loaded task models in a replica
    workdir: str = "adaray_work"  # embedded MLflow store when MLFLOW_TRACKING_URI is unset

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        unknown = [t for t in [*self.tasks, *self.models] if t not in TASKS]
        if unknown:
            raise ConfigError(f"tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
        if not self.tasks:
            raise ConfigError("tasks: serve at least one task")
        for name in ("max_pixels", "max_batch_size", "max_models_per_replica"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s: must be >= 0, got "
                              f"{self.batch_wait_timeout_s}")
        from adaray.tracking import parse_model_uri

        for task, source in self.models.items():
            try:
                parse_model_uri(source)
            except ConfigError as exc:
                raise ConfigError(f"models.{task}: {exc}") from None

    def model_source(self, task: str) -> str:
        """Where the task's model comes from (the champion alias unless configured)."""
        from adaray.tracking import CHAMPION_ALIAS, registered_model_name

        return self.models.get(task, f"models:/{registered_model_name(task)}@{CHAMPION_ALIAS}")

    def fallback_source(self, task: str) -> str | None:
        """The shipped model served while the task has no champion (tasks whose source is
        configured have no fallback)."""
        from adaray.checkpoint import shipped_model

        shipped = shipped_model(task) if task not in self.models else None
        return None if shipped is None else str(shipped)

    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI, else the embedded store of `workdir`."""
        from adaray.tracking import tracking_uri

        return tracking_uri(self.workdir)


class RequestError(AdarayError):
    """A refused request: HTTP `status` and a reason for the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_task(task: str | None, served: list[str]) -> str:
    """The requested task, or 404 listing the served tasks (422 when none is given)."""
    if not task:
        raise RequestError(422, f"missing 'task' (one of: {', '.join(served)})")
    if task not in served:
        raise RequestError(404, f"task {task!r} is not served here (served: "
                                f"{', '.join(served)})")
    return task


def check_output(output: str | None) -> str:
    """`png` (default) or `json`, else 422."""
    output = output or "png"
    if output not in OUTPUTS:
        raise RequestError(422, f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


def decode_source(data: bytes, field_name: str, filename: str | None,
                  max_pixels: int) -> np.ndarray:
    """An uploaded source as a float image, or 422 (undecodable, empty) / 413 (too large)."""
    label = f"part {field_name!r}" + (f" ({filename})" if filename else "")
    try:
        image = decode_image(data, label)
    except ImageReadError as exc:
        raise RequestError(422, str(exc)) from None
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise RequestError(413, f"{label}: {width}x{height} is {height * width} pixels, above "
                                f"the limit of {max_pixels}")
    if min(height, width) < 2:
        raise RequestError(422, f"{label}: {width}x{height} is too small (need at least 2x2)")
    return image


def check_pair(a: np.ndarray, b: np.ndarray) -> None:
    """422 naming both sizes when the sources differ in size."""
    if a.shape[:2] != b.shape[:2]:
        raise RequestError(422, f"sources differ in size: a is {a.shape[1]}x{a.shape[0]}, "
                                f"b is {b.shape[1]}x{b.shape[0]} (width x height)")


def load_task_model(source: str, tracking_uri: str,
                    fallback: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load a served model and describe it: (model, {"source", "version", "score"}); a
    `models:/NAME@ALIAS` source without a version holding the alias is replaced by `fallback`
    when given (the info then names both).

    Raises RequestError(503) with the reason when the source cannot be loaded (no such alias
    and no fallback, registry unreachable, missing or foreign file).
    """
    from adaray.tracking import ModelRegistry, load_model_from, parse_model_uri

    info: dict[str, Any] = {"source": source, "version": None, "score": None}
    try:
        ref = parse_model_uri(source)
        if ref is not None and ref.alias is not None:
            version = ModelRegistry(tracking_uri).alias_version(ref.name, ref.alias)
            if version is None and fallback is not None:
                info.update(source=fallback, instead_of=source)
                source = fallback
            elif version is None:
                raise RequestError(503, f"model {source} is not available: registered model "
                                        f"{ref.name} has no version with alias {ref.alias!r} at "
                                        f"{tracking_uri} (run a sweep, or set models.<task>)")
            else:
                info.update(version=version.version, score=version.score)
        model = load_model_from(source, tracking_uri)
    except RequestError:
        raise
    except Exception as exc:  # any other failure to load leaves the task unavailable
        raise RequestError(503, f"model {source} is not available: {exc}") from None
    return model, info


def limit_threads() -> None:
    """Torch threads = the CPUs Ray gave this process (OMP_NUM_THREADS), not the host's."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass
class ServeSpec:
    """The parts of a Serve config file (serve/config.yaml) that `adaray serve` uses."""

    name: str
    route_prefix: str
    host: str
    port: int
    args: dict[str, Any]
    deployments: dict[str, dict[str, Any]]  # deployment name -> Serve deployment options


def read_serve_config(path: str | Path) -> ServeSpec:
    """Read a Serve config with one application; errors name the file and the field."""
    path = Path(path)
    data = read_yaml(path, "Serve config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with applications:")
    apps = data.get("applications") or []
    if len(apps) != 1:
        raise ConfigError(f"{path}: applications: expected exactly one application")
    app = apps[0]
    http = data.get("http_options") or {}
    deployments = {}
    for entry in app.get("deployments") or []:
        options = dict(entry)
        name = options.pop("name", None)
        if not name:
            raise ConfigError(f"{path}: applications[0].deployments: an entry has no name")
        deployments[name] = options
    args = app.get("args") or {}
    try:
        from_dict(ServeConfig, dict(args))
    except ConfigError as exc:
        raise ConfigError(f"{path}: applications[0].args.{exc}") from None
    return ServeSpec(name=app.get("name", "adaray"), route_prefix=app.get("route_prefix", "/"),
                     host=http.get("host", "127.0.0.1"), port=int(http.get("port", 8000)),
                     args=dict(args), deployments=deployments)


def post_fuse(url: str, path_a: str | Path, path_b: str | Path, task: str,
              output: str = "png", timeout: float = 300.0,
              route_wait_s: float = 0.0) -> tuple[bytes, dict[str, str]]:
    """The client of POST /fuse: send two image files, get (body, headers).

    Raises RequestError with the server's status and reason when it refuses the request.
    `route_wait_s` retries, for that long, while a Serve proxy answers 404 "Path ... not
    found": on a multi-node cluster each node's proxy learns the app's routes a moment after
    `serve.run` returns.
    """
    import requests

    files = {name: (Path(p).name, Path(p).read_bytes())
             for name, p in (("a", path_a), ("b", path_b))}
    deadline = time.monotonic() + route_wait_s
    while True:
        try:
            response = requests.post(f"{url.rstrip('/')}/fuse", params={"task": task,
                                                                        "output": output},
                                     files=files, timeout=timeout)
        except requests.RequestException as exc:
            raise RequestError(503, f"cannot reach {url}: {exc}") from None
        if response.status_code == 200:
            return response.content, dict(response.headers)
        try:
            reason = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:500]
        unrouted = response.status_code == 404 and reason.startswith("Path ")
        if not unrouted or time.monotonic() >= deadline:
            raise RequestError(response.status_code, reason)
        time.sleep(0.5)


def serve_app_module() -> Any:
    """serve/app.py of this checkout, imported as `serve.app` (what Serve's import_path and
    the replicas use; replicas find it through `serve_env_vars()`)."""
    import importlib
    import sys

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("serve.app")


def serve_env_vars() -> dict[str, str]:
    """The environment under which Serve replicas can import `serve.app` (for `init_ray`)."""
    return {"PYTHONPATH": str(REPO_ROOT)}

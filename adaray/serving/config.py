"""The Serve app's settings: `ServeConfig` (the `args:` of serve/config.yaml) and the parts of
a Serve config file that `adaray serve` reads (`read_serve_config`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaray.checkpoint import shipped_model
from adaray.config import ConfigError, from_dict, read_yaml
from adaray.tasks import TASKS
from adaray.tracking import CHAMPION_ALIAS, parse_model_uri, registered_model_name, tracking_uri

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
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
    # Bearer-token auth: the name of the environment variable holding the token (never the
    # token itself); every path but /healthz then needs `Authorization: Bearer <token>`.
    auth_token_env: str | None = None
    max_request_bytes: int = 128 * 1024 * 1024  # larger bodies get 413 before they are read
    request_timeout_s: float = 60.0  # a /fuse request not answered by then gets 504
    max_queued_requests: int = 48  # /fuse requests an API replica holds at once; more get 503

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        unknown = [t for t in [*self.tasks, *self.models] if t not in TASKS]
        if unknown:
            raise ConfigError(f"tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
        if not self.tasks:
            raise ConfigError("tasks: serve at least one task")
        for name in ("max_pixels", "max_batch_size", "max_models_per_replica",
                     "max_request_bytes", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s: must be >= 0, got "
                              f"{self.batch_wait_timeout_s}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s: must be > 0, got {self.request_timeout_s}")
        if self.auth_token_env is not None and not _ENV_NAME.fullmatch(self.auth_token_env):
            raise ConfigError(f"auth_token_env: {self.auth_token_env!r} is not an environment "
                              "variable name (it names the variable, it is not the token)")
        for task, source in self.models.items():
            try:
                parse_model_uri(source)
            except ConfigError as exc:
                raise ConfigError(f"models.{task}: {exc}") from None

    def model_source(self, task: str) -> str:
        """Where the task's model comes from (the champion alias unless configured)."""
        return self.models.get(task, f"models:/{registered_model_name(task)}@{CHAMPION_ALIAS}")

    def fallback_source(self, task: str) -> str | None:
        """The shipped model served while the task has no champion (tasks whose source is
        configured have no fallback)."""
        shipped = shipped_model(task) if task not in self.models else None
        return None if shipped is None else str(shipped)

    def bearer_token(self) -> str | None:
        """The token of `auth_token_env` from this process's environment (None without auth);
        ConfigError when the variable is unset or empty."""
        if self.auth_token_env is None:
            return None
        token = os.environ.get(self.auth_token_env, "")
        if not token:
            raise ConfigError(f"auth_token_env: environment variable {self.auth_token_env} is "
                              "not set (or empty) where the Serve app runs; export the token "
                              "there before starting Ray or the app")
        return token

    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI, else the embedded store of `workdir`."""
        return tracking_uri(self.workdir)


@dataclass
class ServeSpec:
    """The parts of a Serve config file (serve/config.yaml) that `adaray serve` uses."""

    name: str
    route_prefix: str
    host: str
    port: int
    args: dict[str, Any]  # the application's args, as given (build_application takes them)
    config: ServeConfig  # the same args, validated
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
        config = from_dict(ServeConfig, dict(args))
    except ConfigError as exc:
        raise ConfigError(f"{path}: applications[0].args.{exc}") from None
    return ServeSpec(name=app.get("name", "adaray"), route_prefix=app.get("route_prefix", "/"),
                     host=http.get("host", "127.0.0.1"), port=int(http.get("port", 8000)),
                     args=dict(args), config=config, deployments=deployments)

"""Where tracking goes and how things in it are named: no MLflow calls here.

Runs go to the embedded default or to a server chosen by environment, never by code changes:
`tracking_uri(workdir)` is MLFLOW_TRACKING_URI when set, else a SQLite file in the work folder;
`artifact_root(workdir)` keeps the embedded store's artifacts next to it (not in ./mlruns).
Also here: the HTTP client defaults set before MLflow requests, the names of experiments and
registered models, and `parse_model_uri`, the one parser of `models:/NAME@ALIAS` and
`models:/NAME/VERSION`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adaray.errors import ConfigError

MODEL_ARTIFACT_PATH = "model"  # a run's logged model: runs:/<run_id>/model
REGISTERED_MODEL_PREFIX = "adasffuse-"
CHAMPION_ALIAS = "champion"

# MLflow's HTTP client defaults (7 retries with backoff factor 2, 120 s timeout per request) make
# one call to a dead server block for minutes. Tracker sets these with os.environ.setdefault
# (values chosen by the user win; the setting is process-wide and read by mlflow at each
# request): a refused connection then fails in ~3 s, a hung server in at most ~50 s.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # mlflow parses it as an int
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def set_http_env_defaults() -> None:
    """Set HTTP_ENV_DEFAULTS with os.environ.setdefault: values chosen by the user win."""
    for name, value in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def tracking_uri(workdir: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set, else `sqlite:///<abs workdir>/mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def artifact_root(workdir: str | Path) -> str | None:
    """Artifact location for experiments created on the embedded store: `<workdir>/mlartifacts`.

    None when MLFLOW_TRACKING_URI selects a store: then the server (or MLflow's default) decides,
    rather than every client writing artifacts into its own local folder.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (Path(workdir).resolve() / "mlartifacts").as_uri()


def experiment_name(task: str) -> str:
    """The MLflow experiment of a task: `adaray-<task>`."""
    return f"adaray-{task}"


def registered_model_name(task: str) -> str:
    """The registered model of a task: `adasffuse-<task>` (champion: `models:/NAME@champion`)."""
    return f"{REGISTERED_MODEL_PREFIX}{task}"


@dataclass(frozen=True)
class RegisteredModelRef:
    """A parsed registry URI: `models:/NAME@ALIAS` (alias set) or `models:/NAME/VERSION`."""

    name: str
    alias: str | None = None
    version: str | None = None


def parse_model_uri(uri: str) -> RegisteredModelRef | None:
    """The registered model a `models:/` URI names; None for any other source (a file,
    `runs:/...`, `baseline:NAME`). Raises ConfigError for a malformed `models:/` URI."""
    if not uri.startswith("models:/"):
        return None
    body = uri.removeprefix("models:/")
    name, at, alias = body.partition("@")
    if at and name and alias:
        return RegisteredModelRef(name, alias=alias)
    name, _, version = body.rpartition("/")
    if at or not name or not version.isdigit():
        raise ConfigError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return RegisteredModelRef(name, version=version)

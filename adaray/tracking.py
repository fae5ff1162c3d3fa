"""MLflow tracking: the only adaray module that imports mlflow (lazily, inside functions).

Where runs go (embedded default, or a server chosen by environment, never by code changes):
`tracking_uri(workdir)` is MLFLOW_TRACKING_URI when set, else a SQLite file in the work folder;
`artifact_root(workdir)` keeps the embedded store's artifacts next to it (not in ./mlruns).

`Tracker` logs one run from rank 0 through `mlflow.MlflowClient` (no fluent global state, so
several Trackers can live in one process). A tracking outage never stops training: every MLflow
call is guarded, the first failure logs one warning, calls are then skipped until a retry time
(back-off doubling from `retry_s` to `max_retry_s`), and one info line reports the recovery.
A request the server answers but rejects (HTTP 4xx: bad name, unknown run) is a warning, not an
outage. Models are logged as adaray model files (`adaray.checkpoint`), never pickled modules.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from adaray.checkpoint import MODEL_FILENAME, load_model, save_model, unwrap
from adaray.config import dump_yaml
from adaray.data.io import write_image
from adaray.errors import AdarayError, ConfigError, InputNotFoundError, ModelFileError
from adaray.model import AdaSFFuse

logger = logging.getLogger("adaray.tracking")
_guarded = threading.local()  # .active is True while this thread runs a guarded MLflow call

MODEL_ARTIFACT_PATH = "model"
MODEL_CONFIG_FILENAME = "model_config.yaml"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PARAM_VALUE_CHARS = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
PARENT_RUN_TAG = "mlflow.parentRunId"
REGISTERED_MODEL_PREFIX = "adasffuse-"
CHAMPION_ALIAS = "champion"
SCORE_TAG = "val_score"  # model version tag: the validation score that ranks champions

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


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float]:
    """Nested dict -> {"a.b": value}; numbers and strings kept, lists and others as strings."""
    flat: dict[str, str | int | float] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, (str, int, float)):
            flat[name] = value
        else:
            flat[name] = str(list(value)) if isinstance(value, tuple) else str(value)
    return flat


def _redact(text: str) -> str:
    """`text` with the user:password@ part of any URL removed, for log lines."""
    return re.sub(r"://[^/@\s]+@", "://", text)


def short_error(exc: BaseException) -> str:
    """One line for a log: the exception, and its root cause (e.g. "Connection refused")."""
    root = exc
    while (inner := root.__cause__ or root.__context__) is not None and inner is not root:
        root = inner
    lines = str(exc).strip().splitlines() or [""]
    text = f"{type(exc).__name__}: {lines[0][:200]}"
    if root is not exc:
        text += f" [cause {type(root).__name__}: {str(root)[:200]}]"
    return _redact(text)


class _QuietRetries(logging.Filter):
    """Drops urllib3's per-retry warnings inside guarded calls: the Tracker reports outages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_guarded, "active", False)


_QUIET_RETRIES = _QuietRetries()


def _is_rejection(exc: BaseException) -> bool:
    """True when the store answered and refused the request (HTTP 4xx), i.e. not an outage."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and 400 <= exc.get_http_status_code() < 500


class Tracker:
    """One MLflow run, logged so that a tracking outage never raises into the training loop.

    `uri`: tracking URI (see `tracking_uri`); `experiment`: created on first use, with
    `artifact_location` when given. `retry_s` / `max_retry_s`: back-off after a failure.
    Construction sets the HTTP_ENV_DEFAULTS environment variables (os.environ.setdefault).
    """

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None, *,
                 retry_s: float = 30.0, max_retry_s: float = 300.0) -> None:
        set_http_env_defaults()
        logging.getLogger("urllib3.connectionpool").addFilter(_QUIET_RETRIES)  # added once
        self.uri = uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._client_obj: Any = None
        self._run_id: str | None = None
        self._pending_start: dict[str, Any] | None = None
        self._healthy = True
        self._retry_at = 0.0
        self._delay = retry_s
        self._rejected: set[str] = set()

    @property
    def run_id(self) -> str | None:
        """The current run's id (None before a run could be created)."""
        return self._run_id

    @property
    def healthy(self) -> bool:
        """False from a failed MLflow call until a later call succeeds."""
        return self._healthy

    # -- guarded calls ---------------------------------------------------------------------

    def _client(self) -> Any:
        if self._client_obj is None:
            import mlflow

            self._client_obj = mlflow.MlflowClient(tracking_uri=self.uri)
        return self._client_obj

    def _call(self, what: str, fn: Callable[[], object], force: bool = False) -> bool | None:
        """fn() under the outage policy: True when done, False when the store rejected it,
        None when skipped (back-off) or failed (outage). `force` ignores the back-off."""
        if not self._healthy and not force and time.monotonic() < self._retry_at:
            return None
        _guarded.active = True
        try:
            fn()
        except Exception as exc:
            if not _is_rejection(exc):
                self._failed(what, exc)
                return None
            self._reachable()
            if what not in self._rejected:
                self._rejected.add(what)
                logger.warning("MLflow at %s rejected %s: %s (not retried)",
                               _redact(self.uri), what, short_error(exc))
            return False
        finally:
            _guarded.active = False
        self._reachable()
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._healthy:
            logger.warning(
                "MLflow tracking at %s is unavailable (%s failed: %s); training continues and "
                "checkpoints are kept; retrying in %.0f s", _redact(self.uri), what,
                short_error(exc), self._delay)
        else:
            logger.debug("MLflow still unavailable (%s failed: %s)", what, short_error(exc))
        self._healthy = False
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_retry_s)

    def _reachable(self) -> None:
        if not self._healthy:
            logger.info("MLflow tracking reachable again at %s", _redact(self.uri))
        self._healthy = True
        self._delay = self.retry_s

    def _active_run(self, force: bool = False) -> str | None:
        """The run id, first finishing a start_run that an outage interrupted."""
        if self._pending_start is not None and self._call("start_run", self._start,
                                                          force) is False:
            self._pending_start = None  # rejected: retrying would not help
        return self._run_id

    # -- runs ------------------------------------------------------------------------------

    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
                  run_id: str | None = None, parent_run_id: str | None = None) -> str | None:
        """Create a run (or resume `run_id`) and log the flattened `params`; returns its id.

        Tags are set on the run (values as strings); `parent_run_id` nests it under that run.
        When resuming, params already logged are skipped. Returns the run id, None when no run
        exists yet because tracking is down: the first later call that reaches MLflow then
        creates it (`run_id` tells which).
        """
        flat = {key: str(value)[:MAX_PARAM_VALUE_CHARS] for key, value in flatten(params).items()}
        all_tags = {key: str(value) for key, value in tags.items()}
        if parent_run_id is not None:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        self._run_id = run_id
        self._pending_start = {"run_name": run_name, "params": flat, "tags": all_tags}
        return self._active_run()

    def _start(self) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        assert self._pending_start is not None
        run_name, params, tags = (self._pending_start[k] for k in ("run_name", "params", "tags"))
        client = self._client()
        logged: dict[str, str] = {}
        if self._run_id is not None:
            try:
                run = client.get_run(self._run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning("MLflow run %s not found at %s; starting a new run",
                               self._run_id, _redact(self.uri))
                self._run_id = None
            else:
                if run.info.status != "RUNNING":
                    client.update_run(self._run_id, status="RUNNING")
                logged = run.data.params
        if self._run_id is None:
            run = client.create_run(self._experiment_id(), run_name=run_name)
            self._run_id = run.info.run_id  # set now: a failure below resumes this run
        for key in sorted(k for k in params if k in logged and logged[k] != params[k]):
            logger.warning("param %s already logged as %r in run %s; new value %r not logged",
                           key, logged[key], self._run_id, params[key])
        # MlflowClient.log_batch sends at most 100 params per request.
        client.log_batch(self._run_id,
                         params=[Param(k, v) for k, v in params.items() if k not in logged],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        self._pending_start = None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client()
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(self.experiment,
                                            artifact_location=self.artifact_location)
        except MlflowException as exc:  # another process created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(self.experiment).experiment_id

    def end_run(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED (tried even during a back-off)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        run_id = self._active_run(force=True)
        if run_id is not None:
            self._call("end_run", lambda: self._client().set_terminated(run_id, status),
                       force=True)

    # -- other runs of the experiment (a sweep's parent and trials) ----------------------------

    def find_runs(self, tags: Mapping[str, str], key: str) -> dict[str, str]:
        """{value of tag `key`: run id} for the experiment's runs carrying all `tags`
        (empty when tracking is unavailable)."""
        filter_string = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found: dict[str, str] = {}

        def search() -> None:
            experiment = self._client().get_experiment_by_name(self.experiment)
            if experiment is None:
                return
            for run in self._client().search_runs([experiment.experiment_id], filter_string,
                                                  max_results=5000):
                found.setdefault(run.data.tags.get(key, ""), run.info.run_id)

        self._call("search_runs", search)
        return found

    def find_run_id(self, tags: Mapping[str, str]) -> str | None:
        """The id of a run of the experiment carrying all `tags`, or None."""
        runs = self.find_runs(tags, key=next(iter(tags)))
        return next(iter(runs.values()), None)

    def close_run(self, run_id: str, tags: Mapping[str, Any], status: str) -> None:
        """Set tags on another run of the experiment and end it with `status` if it is still
        RUNNING (a sweep closing the runs of trials that Tune stopped)."""
        from mlflow.entities import RunTag

        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")

        def close() -> None:
            client = self._client()
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status)

        self._call("close_run", close)

    # -- logging ---------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at `step` in one request."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), timestamp, int(step)) for key, value in metrics.items()]
        run_id = self._active_run()
        if run_id is not None and batch:
            self._call("log_metrics", lambda: self._client().log_batch(run_id, metrics=batch))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings)."""
        from mlflow.entities import RunTag

        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        run_id = self._active_run()
        if run_id is not None and batch:
            self._call("set_tags", lambda: self._client().log_batch(run_id, tags=batch))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (or a folder's content) under `artifact_path`."""
        local = Path(local_path)
        if not local.exists():
            raise FileNotFoundError(f"artifact to log not found: {local}")
        run_id = self._active_run()
        if run_id is None:
            return
        if local.is_dir():
            self._call("log_artifact",
                       lambda: self._client().log_artifacts(run_id, str(local), artifact_path))
        else:
            self._call("log_artifact",
                       lambda: self._client().log_artifact(run_id, str(local), artifact_path))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """Log an (H, W) or (H, W, 3) image, float in [0, 1] or uint8, as a PNG artifact.

        `artifact_file` is the path inside the run, e.g. "samples/epoch_003.png".
        """
        array = np.asarray(image)
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="adaray-image-") as tmp:
            path = Path(tmp) / name
            write_image(path, array)  # validates shape, values and the .png name
            self.log_artifact(path, folder or None)

    def log_model(self, model: nn.Module, meta: Mapping[str, Any] | None = None) -> str | None:
        """Log an adaray model file as artifacts `model/model.pt` + `model/model_config.yaml`.

        Returns the model URI `runs:/<run_id>/model`, or None when it could not be logged.
        """
        with tempfile.TemporaryDirectory(prefix="adaray-model-") as tmp:
            folder = Path(tmp) / MODEL_ARTIFACT_PATH
            save_model(folder / MODEL_FILENAME, model, dict(meta or {}))
            dump_yaml(unwrap(model).config, folder / MODEL_CONFIG_FILENAME)
            run_id = self._active_run()
            if run_id is None:
                return None
            done = self._call("log_model", lambda: self._client().log_artifacts(
                run_id, str(folder), MODEL_ARTIFACT_PATH))
        return f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}" if done else None


def _registered_version_uri(model_uri: str, tracking_uri: str | None) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> that version's artifact URI.

    Resolved here because mlflow's models:/ download ignores the tracking URI it is given and
    asks the process-wide default registry.
    """
    import mlflow

    ref = parse_model_uri(model_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = ref.version
    if ref.alias is not None:
        version = client.get_model_version_by_alias(ref.name, ref.alias).version
    return client.get_model_version_download_uri(ref.name, version)


def load_model_from(source: str, tracking_uri: str | None = None) -> nn.Module:
    """A model from a logged-model URI (`runs:/`, `models:/`), a classical baseline
    (`baseline:NAME`) or a model file / checkpoint folder path: the one loader of
    `adaray fuse --model`, `adaray evaluate` and the Serve app."""
    from adaray.baselines import BASELINE_PREFIX, get_baseline

    if source.startswith(BASELINE_PREFIX):
        return get_baseline(source)
    if source.startswith(("runs:/", "models:/")):
        return load_logged_model(source, tracking_uri)
    return load_model(source)


def load_logged_model(model_uri: str, tracking_uri: str | None = None) -> AdaSFFuse:
    """Download a logged model (`runs:/ID/model`, `models:/NAME@ALIAS`, `models:/NAME/VERSION`)
    and load it with weights_only=True. `tracking_uri` (e.g. `tracking_uri(workdir)`) defaults to
    MLflow's own (MLFLOW_TRACKING_URI); the registry is MLFLOW_REGISTRY_URI, else the tracking URI.

    Raises RuntimeError when the artifacts cannot be found or downloaded, ConfigError for a
    malformed URI, ModelFileError or InputNotFoundError when they are not an adaray model; every
    message names `model_uri`.
    """
    import mlflow.artifacts

    set_http_env_defaults()
    with tempfile.TemporaryDirectory(prefix="adaray-download-") as tmp:
        try:
            source = model_uri
            if model_uri.startswith("models:/"):
                source = _registered_version_uri(model_uri, tracking_uri)
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp,
                                                        tracking_uri=tracking_uri)
        except AdarayError:
            raise
        except Exception as exc:
            raise RuntimeError(f"{model_uri}: cannot download model ({short_error(exc)})") from exc
        try:
            return load_model(local)
        except (ModelFileError, InputNotFoundError) as exc:
            raise type(exc)(f"{model_uri}: {exc}") from None


# ----------------------------------------------------------------------------- registry


@dataclass
class ModelVersionInfo:
    """One registered model version as adaray reads it (score from the SCORE_TAG tag)."""

    name: str
    version: int
    score: float | None
    aliases: list[str]
    run_id: str
    source: str
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)


def _version_info(mv: Any) -> ModelVersionInfo:
    try:
        score: float | None = float(mv.tags[SCORE_TAG])
    except (KeyError, ValueError):
        score = None
    return ModelVersionInfo(name=mv.name, version=int(mv.version), score=score,
                            aliases=sorted(mv.aliases or []), run_id=mv.run_id or "",
                            source=mv.source or "", created_ms=int(mv.creation_timestamp or 0),
                            tags=dict(mv.tags or {}))


class ModelRegistry:
    """The MLflow Model Registry at `uri` (MLFLOW_REGISTRY_URI when set, else the tracking URI):
    register a run's adaray model, read and move the `champion` alias, list versions.

    Calls raise MLflow's errors: promotion happens once at the end of a sweep, and its caller
    reports a failure instead of losing the sweep's results.
    """

    def __init__(self, uri: str) -> None:
        import mlflow

        set_http_env_defaults()
        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri,
                                          registry_uri=os.environ.get("MLFLOW_REGISTRY_URI"))

    def register(self, name: str, run_id: str, score: float,
                 tags: Mapping[str, Any] | None = None) -> ModelVersionInfo:
        """The run's logged model (`<run artifacts>/model`) as a new version of `name`, tagged
        with its score; a version already registered from this run is returned as it is."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name, description="AdaSFFuse fusion models promoted by adaray sweeps")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        for mv in self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            return _version_info(mv)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        all_tags = {SCORE_TAG: repr(float(score)),
                    **{k: str(v) for k, v in (tags or {}).items()}}
        mv = self.client.create_model_version(name, source, run_id=run_id, tags=all_tags)
        return _version_info(self.client.get_model_version(name, mv.version))

    def alias_version(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version holding `alias`, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return _version_info(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion(self, name: str) -> ModelVersionInfo | None:
        """The version holding the `champion` alias, or None (no model or no champion yet)."""
        return self.alias_version(name, CHAMPION_ALIAS)

    def promote_if_better(self, candidate: ModelVersionInfo) -> tuple[bool, str]:
        """Give `candidate` the champion alias only if its score beats the current champion's.

        Returns (promoted, reason); the reason names both scores.
        """
        current = self.champion(candidate.name)
        if current is not None and current.version == candidate.version:
            return True, f"version {candidate.version} already is the champion"
        if candidate.score is None:
            return False, f"version {candidate.version} has no {SCORE_TAG} tag"
        if current is not None and current.score is not None and candidate.score <= current.score:
            return False, (f"{SCORE_TAG} {candidate.score:.4f} of version {candidate.version} "
                           f"does not beat champion version {current.version} "
                           f"({current.score:.4f}); the alias stays")
        self.client.set_registered_model_alias(candidate.name, CHAMPION_ALIAS,
                                               str(candidate.version))
        if current is None:
            return True, (f"version {candidate.version} ({candidate.score:.4f}) is the first "
                          "champion")
        before = "no score" if current.score is None else f"{current.score:.4f}"
        return True, (f"version {candidate.version} ({candidate.score:.4f}) beats champion "
                      f"version {current.version} ({before})")

    def versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        """Versions of `name`, or of every `adasffuse-*` model, by name then version."""
        if name is not None:
            names = [name]
        else:
            names = [m.name for m in self.client.search_registered_models(
                f"name LIKE '{REGISTERED_MODEL_PREFIX}%'")]
        found = []
        for model_name in names:
            # Search results carry no aliases: the registered model maps alias -> version.
            aliases = self.client.get_registered_model(model_name).aliases or {}
            for mv in self.client.search_model_versions(f"name='{model_name}'"):
                info = _version_info(mv)
                info.aliases = sorted(a for a, v in aliases.items() if int(v) == info.version)
                found.append(info)
        return sorted(found, key=lambda v: (v.name, v.version))

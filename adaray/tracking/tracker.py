"""`Tracker`: one MLflow run, logged so that a tracking outage never stops training.

`Tracker` logs one run from rank 0 through `mlflow.MlflowClient` (no fluent global state, so
several Trackers can live in one process). Every MLflow call is guarded: the first failure logs
one warning, calls are then skipped until a retry time (back-off doubling from `retry_s` to
`max_retry_s`), and one info line reports the recovery. A request the server answers but rejects
(HTTP 4xx: bad name, unknown run) is a warning, not an outage. Models are logged as adaray model
files (`adaray.checkpoint`), never pickled modules. Also here: `flatten` (nested params -> MLflow
params) and `short_error` (one log line for an exception, credentials removed from URLs).
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from adaray.checkpoint import MODEL_FILENAME, save_model, unwrap
from adaray.config import dump_yaml
from adaray.data.io import write_image
from adaray.tracking.uri import MODEL_ARTIFACT_PATH, set_http_env_defaults

logger = logging.getLogger("adaray.tracking")  # the package name, as before (tests use it)
_guarded = threading.local()  # .active is True while this thread runs a guarded MLflow call

MODEL_CONFIG_FILENAME = "model_config.yaml"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PARAM_VALUE_CHARS = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
PARENT_RUN_TAG = "mlflow.parentRunId"


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

"""Per-task hyperparameter sweeps on Ray Tune, tracked in MLflow, promoted in the registry.

A sweep is a search space file (`tune_spaces/<task>.yaml`: `sweep:` settings and `params:`
distributions over TrainConfig fields) applied to a base TrainConfig. Each trial is a function
trainable that builds issue B's `TorchTrainer` for its config and calls `fit()`, so a trial can
itself be multi-worker DDP; `TuneReportCallback` carries rank 0's reports to Tune. The inner
Train run is named by the trial id and stored under the sweep, so a restored sweep resumes each
unfinished trial's Train run from its checkpoint.

The objective is the validation fusion score (`val_score`, or another `val_*` metric), never
the loss: loss weights are searched, and they change the loss scale, so losses of different
trials do not compare. ASHA stops weak trials at rungs measured in training steps; Optuna's TPE
proposes the configs. At the end the trials are tabulated and plotted into the sweep's parent
MLflow run, and the best completed trial's model becomes a new version of `adasffuse-<task>`,
which takes the `champion` alias only if it beats the current champion's score.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from adaray.config import ConfigError, from_dict, read_yaml, set_dotted, to_dict
from adaray.ray_state import placement_groups_released
from adaray.runtime import init_ray
from adaray.tracking import (
    ModelRegistry,
    ModelVersionInfo,
    Tracker,
    artifact_root,
    experiment_name,
    registered_model_name,
    short_error,
    tracking_uri,
)
from adaray.train import TrainConfig, build_trainer, prepare_config

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "fixed")
# Fields a sweep sets itself (from its own settings or command line), never sampled.
SWEEP_OWNED_FIELDS = ("task", "data.root", "max_steps", "name", "storage", "workdir", "workers",
                      "use_gpu", "gpus_per_worker")
TRIAL_RUNS_FOLDER = "train"  # <storage>/<sweep>/train/<trial id>: the trials' Train runs
SWEEP_STATE_FILENAME = "adaray_sweep.yaml"  # base config and space, read back by --resume
TRIAL_DRIVER_CPUS = 0.01  # the trial's own actor; its Train workers hold the real CPUs
SWEEP_TAG = "adaray.sweep"  # MLflow tag: the sweep name (on the parent and every trial run)
ROLE_TAG = "adaray.role"  # "sweep" on the parent run, "trial" on the nested runs
STOP_COMPLETED, STOP_EARLY, STOP_ERROR = "completed", "stopped early (ASHA)", "error"


@dataclass
class SweepConfig:
    """How a sweep runs: trial count and concurrency, ASHA rungs (in steps), objective."""

    num_samples: int = 8  # trials
    max_concurrent: int = 2  # trials running at once
    metric: str = "val_score"  # a validation metric reported by the loop, maximised
    grace_period: int = 200  # steps every trial runs before ASHA may stop it
    max_steps: int = 2000  # steps of a trial that is never stopped (ASHA max_t)
    reduction_factor: int = 3  # ASHA keeps the top 1/reduction_factor at each rung
    searcher: Literal["optuna", "random"] = "optuna"
    seed: int = 0  # searcher seed
    workers_per_trial: int = 1  # Ray Train workers (DDP ranks) of each trial
    gpus_per_trial: float = 0.0  # GPUs of each trial, shared evenly by its workers

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        for name in ("num_samples", "max_concurrent", "grace_period", "max_steps",
                     "workers_per_trial"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor: must be >= 2, got {self.reduction_factor}")
        if self.grace_period > self.max_steps:
            raise ConfigError(f"grace_period: {self.grace_period} exceeds max_steps "
                              f"{self.max_steps}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"gpus_per_trial: must be >= 0, got {self.gpus_per_trial}")
        if self.metric != "val_score" and not self.metric.startswith("val_"):
            raise ConfigError(
                f"metric: {self.metric!r} is not a validation metric (val_score or val_<METRIC>);"
                " sweeps rank trials by fusion quality, never by the loss, whose scale changes "
                "with the loss weights being searched")


@dataclass
class ParamSpec:
    """One searched TrainConfig field: a distribution and its bounds or values."""

    key: str  # dotted TrainConfig field, e.g. "loss.w_int"
    type: str  # one of DISTRIBUTIONS
    low: float | None = None
    high: float | None = None
    values: list[Any] = field(default_factory=list)  # choice: the options; fixed: [value]

    def candidates(self) -> list[Any]:
        """Values that bound what the distribution can produce (checked against TrainConfig)."""
        if self.type in ("choice", "fixed"):
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def tune_domain(self) -> Any:
        """The Ray Tune search domain (randint includes `high`)."""
        if self.type == "choice":
            return tune.choice(self.values)
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "randint":
            return tune.randint(int(self.low), int(self.high) + 1)
        return self.values[0]

    def describe(self) -> str:
        """`loguniform[3, 30]`, `choice[1, 2]`, `fixed 8`: for params and tables."""
        if self.type in ("choice", "fixed"):
            shown = ", ".join(str(v) for v in self.values)
            return f"choice[{shown}]" if self.type == "choice" else f"fixed {shown}"
        return f"{self.type}[{self.low:g}, {self.high:g}]"


@dataclass
class SearchSpace:
    """A parsed, validated search space file."""

    sweep: SweepConfig
    params: list[ParamSpec]
    source: str = ""  # the file it came from, for messages

    def tune_param_space(self) -> dict[str, Any]:
        """Tune's param_space: one entry per dotted key."""
        return {p.key: p.tune_domain() for p in self.params}

    def as_dict(self) -> dict[str, Any]:
        """The space as it would be written in YAML (settings and distributions)."""
        params = {}
        for p in self.params:
            if p.type in ("choice",):
                params[p.key] = {"type": p.type, "values": list(p.values)}
            elif p.type == "fixed":
                params[p.key] = {"type": p.type, "value": p.values[0]}
            else:
                params[p.key] = {"type": p.type, "low": p.low, "high": p.high}
        return {"sweep": to_dict(self.sweep), "params": params}


def _leaf_fields(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of every non-section field of a config dataclass."""
    import dataclasses
    import typing

    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            names |= _leaf_fields(annotation, f"{prefix}{f.name}.")
        else:
            names.add(f"{prefix}{f.name}")
    return names


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def parse_param(key: str, spec: Any) -> ParamSpec:
    """One `params:` entry -> ParamSpec; errors name `params.<key>` and the bad part."""
    where = f"params.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: loguniform, low: 1, "
                          f"high: 10}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.type: unknown distribution {kind!r} "
                          f"(known: {', '.join(DISTRIBUTIONS)})")
    allowed = {"choice": {"values"}, "fixed": {"value"}}.get(kind, {"low", "high"})
    extra = sorted(set(spec) - allowed - {"type"})
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} for a {kind} distribution "
                          f"(expected: {', '.join(sorted(allowed))})")
    missing = sorted(allowed - set(spec))
    if missing:
        raise ConfigError(f"{where}: missing {missing[0]!r} for a {kind} distribution")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
        return ParamSpec(key, kind, values=list(values))
    if kind == "fixed":
        return ParamSpec(key, kind, values=[spec["value"]])
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if low > high or (low == high and kind != "randint"):
        raise ConfigError(f"{where}: low {spec['low']} must be below high {spec['high']}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.low: a loguniform range must be positive, got {low:g}")
    if kind == "randint" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: randint bounds must be integers, got {low:g}, {high:g}")
    return ParamSpec(key, kind, low=low, high=high)


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial: `base` (a TrainConfig dict) with each dotted param set."""
    import copy

    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    return from_dict(TrainConfig, data)


def parse_space(data: Any, base: dict[str, Any], source: str = "space") -> SearchSpace:
    """Validate a search space mapping against the base TrainConfig dict (see module docs).

    Every candidate value (choice values, range ends, fixed values) is applied to the base
    config and checked by TrainConfig's own validation, so a bad space fails here, before Ray.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with sweep: and params:")
    unknown = sorted(set(data) - {"sweep", "params"})
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r} (expected sweep, params)")
    try:
        sweep = from_dict(SweepConfig, data.get("sweep") or {}, prefix="sweep.")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{source}: params: expected a mapping of TrainConfig fields to "
                          "distributions")
    known = _leaf_fields(TrainConfig)
    params = []
    for key, spec in raw_params.items():
        if key not in known:
            raise ConfigError(f"{source}: params.{key}: not a TrainConfig field "
                              f"(fields look like loss.w_int, model.n_hi, optim.lr)")
        if key in SWEEP_OWNED_FIELDS:
            raise ConfigError(f"{source}: params.{key}: set by the sweep itself, not searchable")
        try:
            param = parse_param(key, spec)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        for value in param.candidates():
            try:
                trial_config(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"{source}: params.{key}: value {value!r} is invalid: "
                                  f"{exc}") from None
        params.append(param)
    metric = sweep.metric.removeprefix("val_")
    val_metrics = base.get("val", {}).get("metrics", TrainConfig().val.metrics)
    if sweep.metric != "val_score" and metric not in val_metrics:
        raise ConfigError(f"{source}: sweep.metric: {sweep.metric} is not reported; add "
                          f"{metric} to val.metrics of the base config")
    return SearchSpace(sweep, params, source)


def load_space(path: str | Path, base: dict[str, Any],
               sweep_overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search space YAML file; errors name the file and the key.

    `sweep_overrides` replace `sweep:` settings (the command line's --samples and friends).
    """
    data = read_yaml(path, "search space")
    if isinstance(data, dict) and sweep_overrides:
        data["sweep"] = {**(data.get("sweep") or {}), **sweep_overrides}
    return parse_space(data, base, source=str(path))


def default_space_path(task: str) -> Path:
    """`tune_spaces/<task>.yaml` of this checkout."""
    return Path(__file__).resolve().parent.parent / "tune_spaces" / f"{task}.yaml"


# ----------------------------------------------------------------------------- trials


@dataclass
class TrialOutcome:
    """What a trial ended with, read from Tune's results."""

    trial_id: str
    params: dict[str, Any]
    steps: int
    score: float | None
    metrics: dict[str, Any]
    stop_reason: str
    error: str = ""


class ValidationReportCallback(TuneReportCallback):
    """TuneReportCallback that forwards only reports carrying `metric`: the loop reports loss
    every log_every steps and validation less often, and Tune wants the metric in every result."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        """Forward rank 0's report (and checkpoint path) when it holds the metric."""
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], sweep: dict[str, Any],
              context: dict[str, Any]) -> None:
    """The function trainable: one trial = one Ray Train run of the trial's config."""
    trial_id = tune.get_context().get_trial_id()
    settings = from_dict(SweepConfig, sweep)
    cfg = trial_config(base, params)
    cfg.max_steps = settings.max_steps
    cfg.name = trial_id
    cfg.storage = context["trial_storage"]
    cfg.workers = settings.workers_per_trial
    cfg.use_gpu = settings.gpus_per_trial > 0
    if cfg.use_gpu:
        cfg.gpus_per_worker = settings.gpus_per_trial / settings.workers_per_trial
    trainer = build_trainer(
        cfg, callbacks=[ValidationReportCallback(settings.metric)], progress=False,
        run_tags={SWEEP_TAG: context["sweep"], ROLE_TAG: "trial", "tune_trial_id": trial_id},
        parent_run_id=context["parent_run_id"],
        tracking=(context["tracking_uri"], context["artifact_location"]))
    trainer.fit()


def _outcome(result: Any, sweep: SweepConfig) -> TrialOutcome:
    """A Tune Result -> TrialOutcome (stop reason from the error and the steps reached)."""
    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    trial_id = metrics.get("trial_id") or Path(result.path).name
    steps = int(metrics.get("step", 0) or 0)
    score = metrics.get(sweep.metric)
    if result.error is not None:
        reason, error = STOP_ERROR, str(result.error).strip().splitlines()[0][:300]
    else:
        reason, error = (STOP_COMPLETED if steps >= sweep.max_steps else STOP_EARLY), ""
    return TrialOutcome(trial_id, config, steps, None if score is None else float(score),
                        metrics, reason, error)


def best_outcome(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The completed trial with the highest score (only completed trials have a final model)."""
    done = [o for o in outcomes if o.stop_reason == STOP_COMPLETED and o.score is not None
            and not math.isnan(o.score)]
    return max(done, key=lambda o: o.score) if done else None


def _sort_key(outcome: TrialOutcome) -> tuple[int, float]:
    score = outcome.score
    return (0, -score) if score is not None and not math.isnan(score) else (1, 0.0)


def trial_table(outcomes: list[TrialOutcome], space: SearchSpace) -> tuple[str, str]:
    """The trials sorted by score, as CSV text and as a markdown table."""
    metric = space.sweep.metric
    val_keys = sorted({k for o in outcomes for k in o.metrics
                       if k.startswith("val_") and k != metric})
    header = ["rank", "trial_id", metric, "steps", "stop_reason",
              *[p.key for p in space.params], *val_keys]
    rows = []
    for rank, o in enumerate(sorted(outcomes, key=_sort_key), start=1):
        score = "" if o.score is None else f"{o.score:.6f}"
        rows.append([str(rank), o.trial_id, score, str(o.steps), o.stop_reason,
                     *[_cell(o.params.get(p.key)) for p in space.params],
                     *[_cell(o.metrics.get(k)) for k in val_keys]])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    markdown = "\n".join(["| " + " | ".join(header) + " |",
                          "|" + "---|" * len(header),
                          *["| " + " | ".join(r) + " |" for r in rows]]) + "\n"
    return buffer.getvalue(), markdown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_trials(outcomes: list[TrialOutcome], space: SearchSpace, path: Path) -> Path:
    """Scatter plots of the score against each searched parameter (one panel each), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in space.params if p.type != "fixed"] or space.params
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows),
                                squeeze=False)
    styles = {STOP_COMPLETED: ("tab:blue", "o"), STOP_EARLY: ("tab:orange", "v"),
              STOP_ERROR: ("tab:red", "x")}
    for ax, param in zip(axes.flat, params, strict=False):
        for reason, (color, marker) in styles.items():
            points = [(o.params.get(param.key), o.score) for o in outcomes
                      if o.stop_reason == reason and o.score is not None]
            if not points:
                continue
            xs = [x if isinstance(x, (int, float)) else str(x) for x, _ in points]
            ax.scatter(xs, [y for _, y in points], c=color, marker=marker, label=reason)
        if param.type == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(param.key)
        ax.set_ylabel(space.sweep.metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="upper right")
    figure.suptitle(f"{space.sweep.metric} per trial vs searched parameters")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


class SweepProgress(tune.Callback):
    """Prints a line per trial event on the driver: state counts and the best score so far."""

    def __init__(self, metric: str, max_steps: int, total: int) -> None:
        self.metric, self.max_steps, self.total = metric, max_steps, total
        self.best: tuple[float, str] | None = None
        self.last_step: dict[str, int] = {}

    def _counts(self, trials: list[Any], ended: Any = None) -> str:
        """Trials by state; `ended` is a trial Tune is finishing (its status not yet final)."""
        states = {"running": 0, "completed": 0, "stopped early": 0, "errored": 0}
        for t in trials:
            status = "TERMINATED" if t is ended else t.status
            if status == "RUNNING":
                states["running"] += 1
            elif status == "ERROR":
                states["errored"] += 1
            elif status == "TERMINATED":
                early = self.last_step.get(t.trial_id, 0) < self.max_steps
                states["stopped early" if early else "completed"] += 1
        best = "none yet" if self.best is None else f"{self.best[0]:.4f} ({self.best[1]})"
        shown = ", ".join(f"{n} {k}" for k, n in states.items())
        return f"{shown} of {self.total}; best {self.metric} {best}"

    @staticmethod
    def _say(text: str) -> None:
        print(f"[adaray tune] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial (new or resumed) started."""
        shown = ", ".join(f"{k}={_cell(v)}" for k, v in trial.config.items())
        self._say(f"trial {trial.trial_id} started: {shown}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        """A validation result arrived."""
        step, score = int(result.get("step", 0)), result.get(self.metric)
        self.last_step[trial.trial_id] = step
        if score is None:
            return
        if self.best is None or score > self.best[0]:
            self.best = (float(score), trial.trial_id)
        self._say(f"trial {trial.trial_id} step {step}/{self.max_steps} {self.metric} "
                  f"{score:.4f} | {self._counts(trials)}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        """A trial reached max_steps or ASHA stopped it."""
        step = self.last_step.get(trial.trial_id, int(trial.last_result.get("step", 0)))
        self.last_step[trial.trial_id] = step
        how = "completed" if step >= self.max_steps else "stopped early by ASHA"
        self._say(f"trial {trial.trial_id} {how} at step {step} | "
                  f"{self._counts(trials, ended=trial)}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial failed (after its Train run's own retries)."""
        self._say(f"trial {trial.trial_id} failed: see {trial.local_path} | "
                  f"{self._counts(trials)}")


# ----------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What `run_sweep` returns: the trials, the best one and what promotion did."""

    name: str
    path: str  # the Tune experiment folder (or URI)
    outcomes: list[TrialOutcome]
    best: TrialOutcome | None
    parent_run_id: str | None
    version: ModelVersionInfo | None  # the registered version of the best trial
    promoted: bool
    promotion_note: str
    wall_s: float


def _storage_join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])


def _read_text(uri: str) -> str | None:
    """A small file from a local path or a pyarrow filesystem URI; None when absent."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def _write_text(uri: str, text: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def run_sweep(base: TrainConfig, space: SearchSpace, *, name: str | None = None,
              storage: str | None = None, resume: bool = False) -> SweepResult:
    """Run (or with `resume`, continue) a sweep of `space` over `base`; see the module docs.

    Everything that can be checked is checked before Ray starts: the base config, its data
    folder, the space, and that `name` is new (or, with `resume`, restorable). A resumed sweep
    runs with the base config and space saved when it started.
    """
    started = time.monotonic()
    base = prepare_config(base)
    name = name or f"{base.task}-sweep-{datetime.now():%Y%m%d-%H%M%S}"
    storage = storage or str(Path(base.workdir) / "tune")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    path = _storage_join(storage, name)
    base_dict, space = _sweep_definition(path, name, storage, base, space, resume)
    base = from_dict(TrainConfig, base_dict)
    uri = tracking_uri(base.workdir)

    tracker = Tracker(uri, experiment_name(base.task),
                      artifact_location=artifact_root(base.workdir))
    parent_tags = {"task": base.task, SWEEP_TAG: name, ROLE_TAG: "sweep"}
    previous = tracker.find_run_id(parent_tags) if resume else None
    tracker.start_run(name, {"sweep": to_dict(space.sweep),
                             "space": {p.key: p.describe() for p in space.params}},
                      parent_tags, run_id=previous)
    with tempfile.TemporaryDirectory(prefix="adaray-sweep-") as tmp:
        (Path(tmp) / "space.yaml").write_text(yaml.safe_dump(space.as_dict(), sort_keys=False))
        (Path(tmp) / "base_config.yaml").write_text(yaml.safe_dump(base_dict, sort_keys=False))
        tracker.log_artifact(tmp, "sweep")

    context = {"sweep": name, "parent_run_id": tracker.run_id, "tracking_uri": uri,
               "artifact_location": artifact_root(base.workdir),
               "trial_storage": _storage_join(path, TRIAL_RUNS_FOLDER)}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base_dict, sweep=to_dict(space.sweep),
                             context=context),
        {"cpu": TRIAL_DRIVER_CPUS})
    try:
        init_ray()
        if resume:
            print(f"[adaray tune] resuming sweep {name} from {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = _new_tuner(trainable, space, name, storage, base.max_failures)
        with placement_groups_released(f"sweep {name}"):
            results = tuner.fit()
    except BaseException:
        tracker.end_run("FAILED")
        raise
    return _finish_sweep(results, space, base.task, name, path, tracker, uri, started)


def _sweep_definition(path: str, name: str, storage: str, base: TrainConfig,
                      space: SearchSpace, resume: bool) -> tuple[dict[str, Any], SearchSpace]:
    """The base config dict and space of the sweep: saved now for a new sweep, read back (and
    validated again) for a resumed one."""
    state_uri = _storage_join(path, SWEEP_STATE_FILENAME)
    saved = _read_text(state_uri)
    if resume:
        if saved is None or not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: no sweep named {name!r} under {storage}")
        state = yaml.safe_load(saved)
        return state["base"], parse_space(state["space"], state["base"], source=state_uri)
    if saved is not None:
        raise ConfigError(f"--name: a sweep named {name!r} already exists under {storage}; "
                          "pass --resume to continue it, or choose another name")
    base_dict = to_dict(base)
    _write_text(state_uri, yaml.safe_dump({"base": base_dict, "space": space.as_dict()},
                                          sort_keys=False))
    return base_dict, space


def _new_tuner(trainable: Any, space: SearchSpace, name: str, storage: str,
               max_failures: int) -> tune.Tuner:
    """The Tuner of a new sweep: ASHA over steps, Optuna TPE (or random) proposals, at most
    sweep.max_concurrent trials at once (each searcher takes the limit its own way: Tune's
    max_concurrent_trials is ignored for the random generator)."""
    sweep = space.sweep
    searchable = any(p.type != "fixed" for p in space.params)
    if sweep.searcher == "optuna" and searchable:
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher: Any = ConcurrencyLimiter(OptunaSearch(seed=sweep.seed),
                                           max_concurrent=sweep.max_concurrent)
    else:  # Optuna cannot propose from an all-fixed space
        from ray.tune.search.basic_variant import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=sweep.seed,
                                         max_concurrent=sweep.max_concurrent)
    scheduler = ASHAScheduler(time_attr="step", max_t=sweep.max_steps,
                              grace_period=sweep.grace_period,
                              reduction_factor=sweep.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=space.tune_param_space(),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=sweep.num_samples),
        run_config=tune.RunConfig(
            name=name, storage_path=storage,
            # A trial whose process died restarts and resumes its Train run's checkpoint.
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[SweepProgress(sweep.metric, sweep.max_steps, sweep.num_samples)]),
    )


def _finish_sweep(results: Any, space: SearchSpace, task: str, name: str, path: str,
                  tracker: Tracker, uri: str, started: float) -> SweepResult:
    """Close the trials' runs, log the table and plot, promote the best trial, end the parent."""
    sweep = space.sweep
    outcomes = [_outcome(r, sweep) for r in results]
    trial_runs = tracker.find_runs({SWEEP_TAG: name, ROLE_TAG: "trial"}, key="tune_trial_id")
    for outcome in outcomes:
        run_id = trial_runs.get(outcome.trial_id)
        if run_id is not None:
            tracker.close_run(run_id, {"stop_reason": outcome.stop_reason,
                                       "final_" + sweep.metric: _cell(outcome.score)},
                              "FAILED" if outcome.stop_reason == STOP_ERROR else
                              "KILLED" if outcome.stop_reason == STOP_EARLY else "FINISHED")
    csv_text, markdown = trial_table(outcomes, space)
    with tempfile.TemporaryDirectory(prefix="adaray-sweep-") as tmp:
        folder = Path(tmp)
        (folder / "trials.csv").write_text(csv_text)
        (folder / "trials.md").write_text(markdown)
        plot_trials(outcomes, space, folder / "trials.png")
        tracker.log_artifact(folder, "summary")
        for filename in ("trials.csv", "trials.md"):
            _write_text(_storage_join(path, "summary", filename), (folder / filename).read_text())
    print(markdown, flush=True)

    best = best_outcome(outcomes)
    version, promoted, note = None, False, "no completed trial: nothing to promote"
    if best is not None:
        version, promoted, note = _promote(task, name, best, trial_runs.get(best.trial_id),
                                           sweep.metric, uri)
    stopped = sum(1 for o in outcomes if o.stop_reason == STOP_EARLY)
    tracker.log_metrics({"trials": len(outcomes), "trials_stopped_early": stopped,
                         **({f"best_{sweep.metric}": best.score} if best else {})}, step=0)
    tracker.set_tags({"promotion": note, **({"best_trial": best.trial_id} if best else {})})
    tracker.end_run("FINISHED")
    print(f"[adaray tune] promotion: {note}", flush=True)
    return SweepResult(name, path, outcomes, best, tracker.run_id, version, promoted, note,
                       time.monotonic() - started)


def _promote(task: str, sweep_name: str, best: TrialOutcome, run_id: str | None, metric: str,
             uri: str) -> tuple[ModelVersionInfo | None, bool, str]:
    """Register the best trial's model and move the champion alias if it is better."""
    if run_id is None:
        return None, False, (f"no MLflow run of best trial {best.trial_id} found at "
                             f"{uri}; not registered")
    model_name = registered_model_name(task)
    try:
        registry = ModelRegistry(uri)
        version = registry.register(model_name, run_id, best.score,
                                    {"task": task, "sweep": sweep_name,
                                     "trial_id": best.trial_id, "metric": metric})
        promoted, reason = registry.promote_if_better(version)
    except Exception as exc:  # a registry outage must not lose the sweep's results
        return None, False, (f"registering trial {best.trial_id} in {model_name} failed "
                             f"({short_error(exc)}); rerun with --resume to retry")
    return version, promoted, f"{model_name} version {version.version}: {reason}"

"""Running a sweep: `run_sweep` and its helpers, the sweep's files in storage, and promotion of
the best trial into the MLflow model registry.

`run_sweep` checks everything it can before Ray starts, saves the base config and space next to
the Tune experiment (so `--resume` restores the sweep as it began), opens the sweep's parent
MLflow run and fits a Tuner: ASHA stops weak trials at rungs measured in training steps, and
Optuna's TPE proposes the configs. At the end the trials are tabulated and plotted into the
parent run, and the best completed trial's model becomes a new version of `adasffuse-<task>`,
which takes the `champion` alias only if it beats the current champion's score.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from adaray.config import ConfigError, from_dict, to_dict
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
from adaray.train import RunSettings, TrainConfig, prepare_config
from adaray.tune.report import SweepProgress, format_cell, plot_trials, trial_table
from adaray.tune.space import SearchSpace, parse_space
from adaray.tune.trials import (
    ROLE_TAG,
    STOP_EARLY,
    STOP_ERROR,
    SWEEP_TAG,
    TrialOutcome,
    best_outcome,
    run_trial,
    trial_outcome,
)

TRIAL_RUNS_FOLDER = "train"  # <storage>/<sweep>/train/<trial id>: the trials' Train runs
SWEEP_STATE_FILENAME = "adaray_sweep.yaml"  # base config, run settings and space (--resume)
TRIAL_DRIVER_CPUS = 0.01  # the trial's own actor; its Train workers hold the real CPUs


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


def run_sweep(base: TrainConfig, run: RunSettings, space: SearchSpace, *,
              name: str | None = None, storage: str | None = None,
              resume: bool = False) -> SweepResult:
    """Run (or with `resume`, continue) a sweep of `space` over `base`, each trial with the run
    settings `run` (its name, storage and resources set per trial); see the module docs.

    Everything that can be checked is checked before Ray starts: the base config, its data
    folder, the space, and that `name` is new (or, with `resume`, restorable). A resumed sweep
    runs with the base config, run settings and space saved when it started.
    """
    started = time.monotonic()
    base, run = prepare_config(base, run)
    name = name or f"{base.task}-sweep-{datetime.now():%Y%m%d-%H%M%S}"
    storage = storage or str(Path(run.workdir) / "tune")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    path = _storage_join(storage, name)
    base_dict, run_dict, space = _sweep_definition(path, name, storage, base, run, space, resume)
    base, run = from_dict(TrainConfig, base_dict), from_dict(RunSettings, run_dict)
    uri = tracking_uri(run.workdir)

    tracker = Tracker(uri, experiment_name(base.task),
                      artifact_location=artifact_root(run.workdir))
    parent_tags = {"task": base.task, SWEEP_TAG: name, ROLE_TAG: "sweep"}
    previous = tracker.find_run_id(parent_tags) if resume else None
    tracker.start_run(name, {"sweep": to_dict(space.sweep),
                             "space": {p.key: p.describe() for p in space.params}},
                      parent_tags, run_id=previous)
    with tempfile.TemporaryDirectory(prefix="adaray-sweep-") as tmp:
        (Path(tmp) / "space.yaml").write_text(yaml.safe_dump(space.as_dict(), sort_keys=False))
        (Path(tmp) / "base_config.yaml").write_text(  # a config file: adaray train --config
            yaml.safe_dump({**base_dict, "run": run_dict}, sort_keys=False))
        tracker.log_artifact(tmp, "sweep")

    context = {"sweep": name, "parent_run_id": tracker.run_id, "tracking_uri": uri,
               "artifact_location": artifact_root(run.workdir),
               "trial_storage": _storage_join(path, TRIAL_RUNS_FOLDER)}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base_dict, run=run_dict,
                             sweep=to_dict(space.sweep), context=context),
        {"cpu": TRIAL_DRIVER_CPUS})
    try:
        init_ray()
        if resume:
            print(f"[adaray tune] resuming sweep {name} from {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = _new_tuner(trainable, space, name, storage, run.max_failures)
        with placement_groups_released(f"sweep {name}"):
            results = tuner.fit()
    except BaseException:
        tracker.end_run("FAILED")
        raise
    return _finish_sweep(results, space, base.task, name, path, tracker, uri, started)


def _sweep_definition(
    path: str, name: str, storage: str, base: TrainConfig, run: RunSettings, space: SearchSpace,
    resume: bool,
) -> tuple[dict[str, Any], dict[str, Any], SearchSpace]:
    """The base config and run settings (as dicts) and the space of the sweep: saved now for a
    new sweep, read back (and validated again) for a resumed one."""
    state_uri = _storage_join(path, SWEEP_STATE_FILENAME)
    saved = _read_text(state_uri)
    if resume:
        if saved is None or not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: no sweep named {name!r} under {storage}")
        state = yaml.safe_load(saved)
        return (state["base"], state["run"],
                parse_space(state["space"], state["base"], source=state_uri))
    if saved is not None:
        raise ConfigError(f"--name: a sweep named {name!r} already exists under {storage}; "
                          "pass --resume to continue it, or choose another name")
    base_dict, run_dict = to_dict(base), to_dict(run)
    _write_text(state_uri, yaml.safe_dump({"base": base_dict, "run": run_dict,
                                           "space": space.as_dict()}, sort_keys=False))
    return base_dict, run_dict, space


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
    outcomes = [trial_outcome(r, sweep) for r in results]
    trial_runs = tracker.find_runs({SWEEP_TAG: name, ROLE_TAG: "trial"}, key="tune_trial_id")
    for outcome in outcomes:
        run_id = trial_runs.get(outcome.trial_id)
        if run_id is not None:
            tracker.close_run(run_id, {"stop_reason": outcome.stop_reason,
                                       "final_" + sweep.metric: format_cell(outcome.score)},
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

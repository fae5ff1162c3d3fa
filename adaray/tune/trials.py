"""Trials of a sweep: the function trainable, its report callback, and how a trial ended.

Each trial is a function trainable (`run_trial`) that builds the Ray Train `TorchTrainer` of its
config and calls `fit()`, so a trial can itself be multi-worker DDP; `ValidationReportCallback`
carries rank 0's validation reports to Tune. The inner Train run is named by the trial id and
stored under the sweep, so a restored sweep resumes each unfinished trial's Train run from its
checkpoint. After the sweep, each Tune result becomes a TrialOutcome, and only completed trials
(never those ASHA stopped early) compete for best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from adaray.config import from_dict
from adaray.train import RunSettings, build_trainer
from adaray.tune.space import SweepConfig, trial_config

SWEEP_TAG = "adaray.sweep"  # MLflow tag: the sweep name (on the parent and every trial run)
ROLE_TAG = "adaray.role"  # "sweep" on the parent run, "trial" on the nested runs
STOP_COMPLETED, STOP_EARLY, STOP_ERROR = "completed", "stopped early (ASHA)", "error"


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


def run_trial(params: dict[str, Any], *, base: dict[str, Any], run: dict[str, Any],
              sweep: dict[str, Any], context: dict[str, Any]) -> None:
    """The function trainable: one trial = one Ray Train run of the trial's config, with the
    base run settings (`run`, a RunSettings dict) scaled by the sweep's per-trial resources."""
    trial_id = tune.get_context().get_trial_id()
    settings = from_dict(SweepConfig, sweep)
    cfg = trial_config({**base, "max_steps": settings.max_steps}, params)
    gpus = settings.gpus_per_trial
    trial_run = replace(
        from_dict(RunSettings, run), name=trial_id, storage=context["trial_storage"],
        workers=settings.workers_per_trial, use_gpu=gpus > 0,
        **({"gpus_per_worker": gpus / settings.workers_per_trial} if gpus > 0 else {}))
    trainer = build_trainer(
        cfg, trial_run, callbacks=[ValidationReportCallback(settings.metric)], progress=False,
        run_tags={SWEEP_TAG: context["sweep"], ROLE_TAG: "trial", "tune_trial_id": trial_id},
        parent_run_id=context["parent_run_id"],
        tracking=(context["tracking_uri"], context["artifact_location"]))
    trainer.fit()


def trial_outcome(result: Any, sweep: SweepConfig) -> TrialOutcome:
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


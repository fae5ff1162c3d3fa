"""Per-task hyperparameter sweeps on Ray Tune, tracked in MLflow, promoted in the registry.

A sweep is a search space file (`tune_spaces/<task>.yaml`: `sweep:` settings and `params:`
distributions over TrainConfig fields) applied to a base TrainConfig and its RunSettings. Each
trial is a Ray Train run of its config (itself possibly multi-worker DDP), stored under the
sweep so that a restored sweep resumes each unfinished trial from its checkpoint.

The objective is the validation fusion score (`val_score`, or another `val_*` metric), never
the loss: loss weights are searched, and they change the loss scale, so losses of different
trials do not compare. ASHA stops weak trials at rungs measured in training steps; Optuna's TPE
proposes the configs. At the end the trials are tabulated and plotted into the sweep's parent
MLflow run, and the best completed trial's model becomes a new version of `adasffuse-<task>`,
which takes the `champion` alias only if it beats the current champion's score.

Modules: `space` (search space files, SweepConfig), `trials` (the trial function,
TrialOutcome), `report` (table, plot, progress lines), `sweep` (run_sweep, promotion).
"""

from adaray.tune.report import plot_trials, trial_table
from adaray.tune.space import (
    DISTRIBUTIONS,
    SearchSpace,
    SweepConfig,
    default_space_path,
    load_space,
    parse_space,
)
from adaray.tune.sweep import run_sweep
from adaray.tune.trials import (
    ROLE_TAG,
    STOP_COMPLETED,
    STOP_EARLY,
    STOP_ERROR,
    SWEEP_TAG,
    TrialOutcome,
)

__all__ = [
    "DISTRIBUTIONS", "ROLE_TAG", "STOP_COMPLETED", "STOP_EARLY", "STOP_ERROR", "SWEEP_TAG",
    "SearchSpace", "SweepConfig", "TrialOutcome", "default_space_path", "load_space",
    "parse_space", "plot_trials", "run_sweep", "trial_table",
]

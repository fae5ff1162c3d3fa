"""Reporting of a sweep: the trial table (CSV and markdown), the score-vs-parameter plot, and
the progress lines the driver prints while trials run (`SweepProgress`, a Tune callback)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ray import tune

from adaray.tune.space import SearchSpace
from adaray.tune.trials import STOP_COMPLETED, STOP_EARLY, STOP_ERROR, TrialOutcome


def format_cell(value: Any) -> str:
    """A value as a table cell: empty for None, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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
                     *[format_cell(o.params.get(p.key)) for p in space.params],
                     *[format_cell(o.metrics.get(k)) for k in val_keys]])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    markdown = "\n".join(["| " + " | ".join(header) + " |",
                          "|" + "---|" * len(header),
                          *["| " + " | ".join(r) + " |" for r in rows]]) + "\n"
    return buffer.getvalue(), markdown


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
        shown = ", ".join(f"{k}={format_cell(v)}" for k, v in trial.config.items())
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


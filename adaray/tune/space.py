"""Search spaces of sweeps: the `tune_spaces/<task>.yaml` files, parsed and validated.

A space file has `sweep:` settings (SweepConfig: trial count, concurrency, ASHA rungs, the
validation metric maximised) and `params:` distributions over dotted TrainConfig fields. Every
candidate value is checked against TrainConfig before Ray starts. Only hyperparameters can be
searched: TrainConfig holds nothing else (run settings are `RunSettings`), and a sweep sets the
task and the step count itself.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ray import tune

from adaray import shipped_path
from adaray.config import ConfigError, from_dict, read_yaml, set_dotted, to_dict
from adaray.train import RunSettings, TrainConfig

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "fixed")
# TrainConfig fields a sweep sets itself (the base config's task, sweep.max_steps).
SWEEP_OWNED_FIELDS = ("task", "max_steps")


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
        self.validate()

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
    run_settings = {f.name for f in dataclasses.fields(RunSettings)}
    params = []
    for key, spec in raw_params.items():
        if key.removeprefix("run.") in run_settings:
            raise ConfigError(f"{source}: params.{key}: a run setting (RunSettings), not a "
                              "hyperparameter; sweeps search TrainConfig fields")
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
    """The shipped search space of `task` (tune_spaces/<task>.yaml)."""
    return shipped_path("tune_spaces", f"{task}.yaml")

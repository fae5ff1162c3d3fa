"""The training config: `TrainConfig` (the hyperparameters) with its sections, and
`RunSettings` (where and how a run executes), loaded from one YAML file with `--set` overrides
(`load_config`)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaray import metrics as fusion_metrics
from adaray.config import ConfigError, apply_overrides, from_dict, read_yaml
from adaray.data import DataConfig
from adaray.losses import LossConfig
from adaray.model import ModelConfig
from adaray.tasks import TASKS


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to min_lr_ratio * lr; gradient clipping."""

    lr: float = 2e-4
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip: must be >= 0, got {self.grad_clip}")


@dataclass(frozen=True)
class ValConfig:
    """Validation on the held-out pairs at full image size."""

    metrics: list[str] = field(default_factory=lambda: ["Qabf", "VIF", "SSIM", "SF", "EN"])
    grid_pairs: int = 3  # val pairs shown in the logged A | B | fused grid

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for an unknown metric name."""
        unknown = [m for m in self.metrics if m not in fusion_metrics.METRICS]
        if unknown:
            raise ConfigError(f"metrics: unknown metric {unknown[0]!r} "
                              f"(known: {', '.join(fusion_metrics.METRICS)})")


@dataclass(frozen=True)
class TrainConfig:
    """What a training run learns and how: the hyperparameters. Sweeps sample these fields,
    and checkpoints and MLflow params record them; where and on what the run executes is in
    `RunSettings`."""

    task: str = "ivf"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    val: ValConfig = field(default_factory=ValConfig)
    max_steps: int = 2000
    log_every: int = 10  # steps between reports (driver progress, MLflow step metrics)
    val_every: int = 200  # steps between validations (every checkpoint validates too)
    ckpt_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.task not in TASKS:
            raise ConfigError(f"task: unknown task {self.task!r} (known: {', '.join(TASKS)})")
        for name in ("max_steps", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")


_WORKER_RANGE = re.compile(r"\d+-\d+")


@dataclass(frozen=True)
class RunSettings:
    """Where and how a training run executes (the `run:` section of a config file): its data
    folder, Ray Train's scaling, storage, failure and checkpoint settings. Never sampled by a
    sweep, never written into checkpoints or model files."""

    data: str | None = None  # folder to discover pairs in (--data); every node must see it
    # Ray Train workers (DDP ranks): N, or "MIN-MAX" for an elastic run that keeps training on
    # the workers it can place (at least MIN) and grows back to MAX when nodes return.
    workers: int | str = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1  # CPUs reserved per worker; also its torch thread count
    gpus_per_worker: float = 1.0  # GPUs per worker with use_gpu (a fraction shares a GPU)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    name: str | None = None  # run name: rerunning a name in the same storage resumes it
    storage: str | None = None  # checkpoint storage: path or URI (default <workdir>/runs)
    workdir: str = "adaray_work"  # local home of the embedded MLflow store and default storage
    max_failures: int = 3  # worker-group restarts from the latest checkpoint
    num_to_keep: int = 2  # checkpoints kept, best val_score first
    resize_check_s: float = 60.0  # elastic runs: seconds between checks for room to grow

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers: equal for a fixed count."""
        if isinstance(self.workers, int):
            return self.workers, self.workers
        low, _, high = self.workers.partition("-")
        return int(low), int(high)

    @property
    def elastic(self) -> bool:
        """True when the worker count is a range (`workers: MIN-MAX`)."""
        low, high = self.worker_range
        return low != high

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if isinstance(self.workers, int):
            if self.workers < 1:
                raise ConfigError(f"workers: must be >= 1, got {self.workers}")
        elif not _WORKER_RANGE.fullmatch(self.workers):
            raise ConfigError(f"workers: expected a count N or a range MIN-MAX, got "
                              f"{self.workers!r}")
        elif not 1 <= self.worker_range[0] <= self.worker_range[1]:
            raise ConfigError(f"workers: need 1 <= MIN <= MAX, got {self.workers!r}")
        for name in ("cpus_per_worker", "num_to_keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.resize_check_s < 0:
            raise ConfigError(f"resize_check_s: must be >= 0, got {self.resize_check_s}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures: must be >= -1, got {self.max_failures}")
        if self.gpus_per_worker <= 0:
            raise ConfigError(f"gpus_per_worker: must be > 0, got {self.gpus_per_worker}")


def _parse(data: dict[str, Any], where: str) -> tuple[TrainConfig, RunSettings]:
    """TrainConfig and RunSettings of a config mapping; errors start with `where`."""
    fields = dict(data)
    run = fields.pop("run", None) or {}
    try:
        return from_dict(TrainConfig, fields), from_dict(RunSettings, run, prefix="run.")
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def load_config(path: str | Path | None = None,
                overrides: list[str] = ()) -> tuple[TrainConfig, RunSettings]:
    """The TrainConfig and RunSettings of an optional YAML file (hyperparameters at the top
    level, run settings under `run:`), after `key.sub=value` overrides in order (`run.workers=2`
    sets a run setting). The file must be valid on its own; errors name it."""
    data = read_yaml(path) if path is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {data!r}")
    if path is not None:
        _parse(data, f"{path}: ")
    return _parse(apply_overrides(copy.deepcopy(data), list(overrides)), "")


def load_train_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The TrainConfig of `load_config` (its run settings checked and dropped)."""
    return load_config(path, overrides)[0]

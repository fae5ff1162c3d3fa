"""The driver side of training: `build_trainer(cfg, run)` turns a TrainConfig and its
RunSettings into a Ray Train `TorchTrainer` (scaling, storage, failures, checkpoints, MLflow
run) whose workers run `adaray.train.loop.train_loop_per_worker`; `ProgressCallback` prints
its progress."""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ray.train import Checkpoint, UserCallback

from adaray import SOURCE_TREE
from adaray.config import ConfigError, to_dict
from adaray.data import ImagePair, discover_pairs, split_pairs
from adaray.data.ingest import (
    TRAIN,
    VALIDATION,
    quiet_ray_data,
    train_dataset,
    validation_dataset,
)
from adaray.data.location import Location
from adaray.data.pairs import is_manifest
from adaray.errors import InputNotFoundError
from adaray.tasks import get_task
from adaray.train.config import RunSettings, TrainConfig
from adaray.train.loop import train_loop_per_worker


class ProgressCallback(UserCallback):
    """One progress line per report: step, loss, samples/s, validation score and ETA; and a
    line whenever the number of workers changes (a restart after a failure, an elastic
    resize)."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.started: tuple[float, int] | None = None
        self.workers = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Checkpoint | None) -> None:
        """Print the rank-0 metrics of this report."""
        rank0 = metrics[0] if metrics else {}
        step = int(rank0.get("step", 0))
        if len(metrics) != self.workers:
            print(f"[adaray train] {len(metrics)} worker{'s' * (len(metrics) != 1)} from step "
                  f"{step}" + (f" (were {self.workers})" if self.workers else ""), flush=True)
            self.workers = len(metrics)
        now = time.monotonic()
        if self.started is None or step <= self.started[1]:  # first report, or a restart
            self.started = (now, step)
            eta = "?"
        else:
            rate = (step - self.started[1]) / (now - self.started[0])
            eta = f"{(self.max_steps - step) / rate:.0f} s"
        line = (f"[adaray train] step {step}/{self.max_steps}  loss {rank0.get('loss', 0):.4f}  "
                f"{rank0.get('samples_per_s', 0):.2f} samples/s  ETA {eta}")
        if "val_score" in rank0:
            line += f"  val_score {rank0['val_score']:.4f}"
        if checkpoint is not None:
            line += "  (checkpoint)"
        print(line, flush=True)


def _git_commit() -> str:
    head = SOURCE_TREE / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return ""


def best_checkpoint(result: Any) -> tuple[Any, dict[str, Any]] | None:
    """The (checkpoint, metrics) of a finished run's highest val_score; None without any."""
    if not result.best_checkpoints:
        return None
    return max(result.best_checkpoints, key=lambda c: c[1]["val_score"])


def prepare_config(cfg: TrainConfig, run: RunSettings) -> tuple[TrainConfig, RunSettings]:
    """`cfg` and `run` checked, with absolute data and work folders (the work folder created):
    an unknown task, a missing data folder or one without pairs fails here, before Ray
    starts."""
    return cfg, _checked_run(cfg, run)[0]


def _checked_run(cfg: TrainConfig, run: RunSettings
                 ) -> tuple[RunSettings, list[ImagePair], list[ImagePair]]:
    """`prepare_config`'s checks; also returns the (train, validation) pairs it listed."""
    get_task(cfg.task)
    if run.data is None:
        raise ConfigError("run.data: no data folder given (--data PATH)")
    root = Location.of(run.data)
    if not (is_manifest(root) or root.is_dir()):
        raise InputNotFoundError(f"data folder not found: {root}")
    train_pairs, val_pairs = split_training_pairs(cfg, root)  # pairs are discoverable
    workdir = Path(run.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return replace(run, data=str(root), workdir=str(workdir)), train_pairs, val_pairs


def split_training_pairs(cfg: TrainConfig,
                         data: str | Location) -> tuple[list[ImagePair], list[ImagePair]]:
    """The (train, validation) pairs of the data folder, URI or manifest `data`."""
    pairs = discover_pairs(data, cfg.task, a_dir=cfg.data.a_dir, b_dir=cfg.data.b_dir)
    return split_pairs(pairs, cfg.data.val_fraction, cfg.data.max_val_pairs)


def build_trainer(
    cfg: TrainConfig, run: RunSettings, callbacks: list[Any] | None = None, *,
    progress: bool = True, run_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None, tracking: tuple[str, str | None] | None = None,
) -> Any:
    """A TorchTrainer that trains `cfg` as `run` says; a bad task or a missing data folder
    fail here, before Ray.

    `callbacks` are extra Ray Train UserCallbacks; `progress` adds the driver's progress lines.
    `run_tags` are added to the MLflow run, which is nested under `parent_run_id` when given
    (a Tune trial under its sweep). `tracking` is (tracking URI, artifact location), resolved
    by default here from MLFLOW_TRACKING_URI and the work folder; a Tune trial gets its sweep
    driver's, since trial processes do not inherit the driver's environment.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from adaray import tracking as mlflow_tracking

    run, train_pairs, val_pairs = _checked_run(cfg, run)  # lists the data once
    quiet_ray_data()  # the driver's DataContext goes to the workers; the loop prints progress
    workdir = Path(run.workdir)
    run = replace(run, name=run.name or f"{cfg.task}-{datetime.now():%Y%m%d-%H%M%S}",
                  storage=run.storage or str(workdir / "runs"))
    uri, artifact_location = tracking or (mlflow_tracking.tracking_uri(workdir),
                                          mlflow_tracking.artifact_root(workdir))
    mlflow_run = {
        "tracking_uri": uri,
        "experiment": mlflow_tracking.experiment_name(cfg.task),
        "artifact_location": artifact_location,
        "git_commit": _git_commit(),
        "tags": dict(run_tags or {}),
        "parent_run_id": parent_run_id,
    }
    resources = {"CPU": run.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = run.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg), "run": to_dict(run), "mlflow": mlflow_run},
        # Made by the controller, on this node, when the worker group starts.
        datasets={TRAIN: functools.partial(train_dataset, train_pairs, cfg.data),
                  VALIDATION: functools.partial(validation_dataset, val_pairs, cfg.data)},
        dataset_config=DataConfig(datasets_to_split=[TRAIN]),
        scaling_config=ScalingConfig(num_workers=run.worker_range if run.elastic
                                     else run.worker_range[0], use_gpu=run.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=run.placement_strategy,
                                     elastic_resize_monitor_interval_s=run.resize_check_s),
        torch_config=TorchConfig(backend="nccl" if run.use_gpu else "gloo"),
        run_config=RunConfig(
            name=run.name,
            storage_path=run.storage,
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep,
                                               checkpoint_score_attribute="val_score",
                                               checkpoint_score_order="max"),
            callbacks=[*([ProgressCallback(cfg.max_steps)] if progress else []),
                       *(callbacks or [])],
        ),
    )

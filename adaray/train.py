"""Distributed training of AdaSFFuse on Ray Train (V2), tracked in MLflow.

`build_trainer(cfg)` returns a `TorchTrainer` whose workers run `train_loop_per_worker`; the
loop reads top to bottom: set up, restore, then steps with logging, validation and checkpoints.
Resuming is the V2 way: build the trainer again with the same run name and storage and call
`fit()`; the loop restores everything from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, UserCallback
from torch import nn
from torch.utils.data import DataLoader

from adaray import metrics as fusion_metrics
from adaray.checkpoint import MODEL_FILENAME, model_payload, unwrap
from adaray.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from adaray.data import DataConfig, FusionPairDataset, build_datasets, merge_luma
from adaray.errors import InputNotFoundError
from adaray.losses import FusionLoss, LossConfig
from adaray.model import AdaSFFuse, ModelConfig
from adaray.runtime import configure_allocator
from adaray.tasks import TASKS, get_task

STATE_FILENAME = "train_state.pt"
# val_score = mean over pairs of the mean of metric / scale: each term lies in about [0, 1].
VAL_SCORE_SCALES = {"Qabf": 1.0, "VIF": 2.0, "SSIM": 2.0}


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to min_lr_ratio * lr; gradient clipping."""

    lr: float = 2e-4
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

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


@dataclass
class ValConfig:
    """Validation on the held-out pairs at full image size."""

    metrics: list[str] = field(default_factory=lambda: ["Qabf", "VIF", "SSIM", "SF", "EN"])
    grid_pairs: int = 3  # val pairs shown in the logged A | B | fused grid

    def validate(self) -> None:
        """Raise ConfigError for an unknown metric name."""
        unknown = [m for m in self.metrics if m not in fusion_metrics.METRICS]
        if unknown:
            raise ConfigError(f"metrics: unknown metric {unknown[0]!r} "
                              f"(known: {', '.join(fusion_metrics.METRICS)})")


@dataclass
class TrainConfig:
    """Everything one training run needs; loaded from YAML, overridden by `--set key=value`."""

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
    workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    cpus_per_worker: int = 1  # CPUs reserved per worker; also its torch thread count
    gpus_per_worker: float = 1.0  # GPUs per worker with use_gpu (a fraction shares a GPU)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    name: str | None = None  # run name: rerunning a name in the same storage resumes it
    storage: str | None = None  # checkpoint storage: path or URI (default <workdir>/runs)
    workdir: str = "adaray_work"  # local home of the embedded MLflow store and default storage
    max_failures: int = 3  # worker-group restarts from the latest checkpoint
    num_to_keep: int = 2  # checkpoints kept, best val_score first

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.task not in TASKS:
            raise ConfigError(f"task: unknown task {self.task!r} (known: {', '.join(TASKS)})")
        for name in ("max_steps", "log_every", "val_every", "ckpt_every", "workers",
                     "cpus_per_worker", "num_to_keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures: must be >= -1, got {self.max_failures}")
        if self.gpus_per_worker <= 0:
            raise ConfigError(f"gpus_per_worker: must be > 0, got {self.gpus_per_worker}")


def load_train_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """TrainConfig from an optional YAML file, then `key.sub=value` overrides in order."""
    data = to_dict(load_yaml(TrainConfig, path)) if path is not None else {}
    return from_dict(TrainConfig, apply_overrides(data, list(overrides)))


# ----------------------------------------------------------------------------- the loop


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then cosine to min_lr_ratio."""
    progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
    return warmup_cosine_factor(step, progress, cfg)


def warmup_cosine_factor(step: int, progress: float, cfg: OptimConfig) -> float:
    """Linear warm-up over cfg.warmup_steps, then a cosine from 1 at `progress` 0 (the end of
    warm-up) to min_lr_ratio at `progress` >= 1."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, schedule: Callable[[int], float] | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its lr schedule (stepped once per optimizer step): `schedule(step)` multiplies
    the lr; by default the warm-up + cosine over cfg.max_steps (`lr_factor`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule or (lambda step: lr_factor(step, cfg.optim, cfg.max_steps)))
    return optimizer, scheduler


def optimizer_step(
    loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float,
) -> None:
    """Backward, clip the global gradient norm (when grad_clip > 0), update, advance the lr."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def _rng_state() -> dict[str, Any]:
    """RNG states as plain tensors, ints and tuples (loadable with weights_only=True)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])


def _replica_divergence(model: nn.Module, world_size: int) -> float:
    """Max |parameter - rank 0's parameter| over all ranks (0.0 when DDP keeps them in sync)."""
    if world_size == 1:
        return 0.0
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    reference = flat.clone()
    torch.distributed.broadcast(reference, src=0)
    divergence = (flat - reference).abs().max()
    torch.distributed.all_reduce(divergence, op=torch.distributed.ReduceOp.MAX)
    return float(divergence)


def _node_ids(world_size: int) -> list[str]:
    """The Ray node ID of every rank, in rank order."""
    node_id = ray.get_runtime_context().get_node_id()
    if world_size == 1:
        return [node_id]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, node_id)
    return gathered


def endless_batches(loader: DataLoader, world_size: int) -> Iterator[dict[str, Any]]:
    """Endless batches, reshuffled each epoch (the distributed sampler needs set_epoch)."""
    epoch = 0
    while True:
        if world_size > 1:
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def validate(
    model: nn.Module, val_set: FusionPairDataset, cfg: ValConfig
) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean validation metrics (and val_score) over full-size val pairs, plus an A | B | fused
    grid (| weight of A, for a head that composes the sources).

    Fused and source luma are scored as 8-bit images, as published numbers are (METRICS.md).
    """
    net = unwrap(model)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    totals: dict[str, float] = {}
    rows = []
    names = list(dict.fromkeys([*cfg.metrics, *VAL_SCORE_SCALES]))
    with torch.inference_mode():
        for index in range(len(val_set)):
            item = val_set[index]
            a, b = item["a"][None].to(device), item["b"][None].to(device)
            fused_t, maps = net.forward_with_maps(a, b)
            fused = fused_t[0, 0].float().cpu().numpy()
            a_np, b_np = item["a"][0].numpy(), item["b"][0].numpy()
            scores = fusion_metrics.evaluate_images(fused, a_np, b_np, names)
            scores["val_score"] = sum(scores[m] / s for m, s in VAL_SCORE_SCALES.items()) / len(
                VAL_SCORE_SCALES)
            for key, value in scores.items():
                totals[key] = totals.get(key, 0.0) + (0.0 if math.isnan(value) else value)
            if index < cfg.grid_pairs:
                shown = [a_np, b_np, np.clip(fused, 0, 1)]
                if maps is not None:
                    shown.append(maps[0, 0].float().cpu().numpy())
                rows.append(np.concatenate(shown, axis=1))
    net.train(was_training)
    means = {k: float(v) / max(1, len(val_set)) for k, v in totals.items()}
    return means, _stack_rows(rows)


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray | None:
    """Rows of different widths on one canvas, padded with black."""
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]))) for r in rows]
    return merge_luma(np.concatenate(padded, axis=0), None)


def _quiet_ray_report_log() -> None:
    """Stop Ray Train echoing every `ray.train.report` (the whole metrics dict) on the console.

    Ray 2.60 logs each report at INFO from a logger named by its file path, which the root
    logger passes to the console and `LoggingConfig` cannot filter; the loop's own progress line
    (ProgressCallback) says the same in one line. Warnings and errors still show.
    """
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker loop (also runs in-process with ScalingConfig(num_workers=0))."""
    from adaray.tracking import Tracker

    cfg = from_dict(TrainConfig, config["train"])
    run = config["run"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    _quiet_ray_report_log()
    configure_allocator()
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    # Data: every worker must see the data folder (a shared filesystem on a cluster).
    if not Path(cfg.data.root).is_dir():
        raise InputNotFoundError(f"data folder {cfg.data.root} is not readable on node "
                                 f"{socket.gethostname()} (worker rank {rank}); on a cluster "
                                 "it must be on a filesystem mounted on every node")
    train_set, val_set = build_datasets(cfg.data.root, cfg.task, cfg.data, check=rank == 0)
    loader = DataLoader(train_set, batch_size=cfg.data.batch_size, shuffle=True,
                        drop_last=len(train_set) >= cfg.data.batch_size * world_size,
                        num_workers=cfg.data.num_workers)
    loader = ray.train.torch.prepare_data_loader(loader)

    # Model, optimizer, schedule, loss.
    model = ray.train.torch.prepare_model(AdaSFFuse(cfg.model))
    device = ray.train.torch.get_device()
    optimizer, scheduler = build_optimizer(model, cfg)
    loss_fn = FusionLoss(cfg.loss.resolved(cfg.task))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    # Restore: the latest registered checkpoint continues the run exactly where it stopped.
    step, mlflow_run_id, best_score = 0, None, float("-inf")
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILENAME, map_location=device,
                               weights_only=True)
        unwrap(model).load_state_dict(state["model"]["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        step, mlflow_run_id = int(state["step"]), state["mlflow_run_id"] or None
        best_score = float(state["best_score"])

    node_ids = _node_ids(world_size)
    tracker = None
    if rank == 0:
        tracker = Tracker(run["tracking_uri"], run["experiment"],
                          artifact_location=run["artifact_location"])
        tags = {"task": cfg.task, "git_commit": run["git_commit"],
                "ray_job_id": ray.get_runtime_context().get_job_id(), "run_name": run["name"],
                "ray_nodes": ",".join(node_ids), "world_size": str(world_size),
                **run.get("tags", {})}
        tracker.start_run(run["name"], to_dict(cfg), tags, run_id=mlflow_run_id,
                          parent_run_id=run.get("parent_run_id"))

    batches = endless_batches(loader, world_size)
    samples, window_start = 0, time.perf_counter()
    while step < cfg.max_steps:
        batch = next(batches)
        a, b = batch["a"].to(device), batch["b"].to(device)
        with autocast:
            fused = model(a, b)
        loss, terms = loss_fn(fused.float(), a, b)
        optimizer_step(loss, model, optimizer, scheduler, cfg.optim.grad_clip)
        step += 1
        samples += a.shape[0] * world_size

        is_ckpt = step % cfg.ckpt_every == 0 or step == cfg.max_steps
        is_val = is_ckpt or step % cfg.val_every == 0
        if not (is_val or step % cfg.log_every == 0):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": samples / max(elapsed, 1e-9),
                   **{f"loss_{k}": float(v) for k, v in terms.items()}}
        samples, window_start = 0, time.perf_counter()
        if is_ckpt:  # a collective: every rank takes part
            metrics["replica_divergence"] = _replica_divergence(model, world_size)
        report_checkpoint = None
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                if is_val:  # validation metrics appear in the reports of validation steps
                    scores, grid = validate(model, val_set, cfg.val)
                    best_score = max(best_score, scores["val_score"])
                    if grid is not None:
                        tracker.log_image(grid, f"val/step_{step:07d}.png")
                    metrics.update({f"val_{k}" if k != "val_score" else k: v
                                    for k, v in scores.items()})
                tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step)
                if is_ckpt:
                    report_checkpoint = _write_checkpoint(
                        Path(folder), model, optimizer, scheduler, step, cfg, tracker.run_id,
                        best_score)
            ray.train.report(metrics, checkpoint=report_checkpoint)

    if tracker is not None:
        tracker.log_model(unwrap(model), meta={"task": cfg.task, "step": step})
        tracker.end_run("FINISHED")


def _write_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, cfg: TrainConfig,
    mlflow_run_id: str | None, best_score: float,
) -> Any:
    """Write the train state (plain tensors, weights_only-loadable) and the model file."""
    payload = model_payload(model, meta={"task": cfg.task, "step": step})
    state = {
        "model": payload,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "config": to_dict(cfg),
        "rng": [_rng_state()],
        "mlflow_run_id": mlflow_run_id or "",
        "best_score": best_score,
    }
    torch.save(state, folder / STATE_FILENAME)
    torch.save(payload, folder / MODEL_FILENAME)
    return Checkpoint.from_directory(str(folder))


# ----------------------------------------------------------------------------- the driver


class ProgressCallback(UserCallback):
    """One progress line per report: step, loss, samples/s, validation score and ETA."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.started: tuple[float, int] | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Checkpoint | None) -> None:
        """Print the rank-0 metrics of this report."""
        rank0 = metrics[0] if metrics else {}
        step = int(rank0.get("step", 0))
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
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
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


def prepare_config(cfg: TrainConfig) -> TrainConfig:
    """A checked copy of `cfg` with absolute data and work folders (created): a bad field, an
    unknown task, a missing data folder or one without pairs fails here, before Ray starts."""
    cfg = from_dict(TrainConfig, to_dict(cfg))  # validates every section
    get_task(cfg.task)
    if cfg.data.root is None:
        raise ConfigError("data.root: no data folder given (--data PATH)")
    root = Path(cfg.data.root).expanduser().resolve()
    if not root.is_dir():
        raise InputNotFoundError(f"data folder not found: {root}")
    build_datasets(root, cfg.task, cfg.data, check=False)  # pairs are discoverable
    workdir = Path(cfg.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.data.root, cfg.workdir = str(root), str(workdir)
    return cfg


def build_trainer(
    cfg: TrainConfig, callbacks: list[Any] | None = None, *, progress: bool = True,
    run_tags: dict[str, str] | None = None, parent_run_id: str | None = None,
    tracking: tuple[str, str | None] | None = None,
) -> Any:
    """A TorchTrainer for `cfg`; bad config or a missing data folder fail here, before Ray.

    `callbacks` are extra Ray Train UserCallbacks; `progress` adds the driver's progress lines.
    `run_tags` are added to the MLflow run, which is nested under `parent_run_id` when given
    (a Tune trial under its sweep). `tracking` is (tracking URI, artifact location), resolved
    by default here from MLFLOW_TRACKING_URI and the work folder; a Tune trial gets its sweep
    driver's, since trial processes do not inherit the driver's environment.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from adaray import tracking as mlflow_tracking

    cfg = prepare_config(cfg)
    workdir = Path(cfg.workdir)
    name = cfg.name or f"{cfg.task}-{datetime.now():%Y%m%d-%H%M%S}"
    storage = cfg.storage or str(workdir / "runs")
    train = to_dict(cfg)
    uri, artifact_location = tracking or (mlflow_tracking.tracking_uri(workdir),
                                          mlflow_tracking.artifact_root(workdir))
    run = {
        "name": name,
        "tracking_uri": uri,
        "experiment": mlflow_tracking.experiment_name(cfg.task),
        "artifact_location": artifact_location,
        "git_commit": _git_commit(),
        "tags": dict(run_tags or {}),
        "parent_run_id": parent_run_id,
    }
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": train, "run": run},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep,
                                               checkpoint_score_attribute="val_score",
                                               checkpoint_score_order="max"),
            callbacks=[*([ProgressCallback(cfg.max_steps)] if progress else []),
                       *(callbacks or [])],
        ),
    )

"""The Ray Train worker loop, top to bottom: set up, restore, then steps with logging,
validation and checkpoints.

Resuming is the V2 way: build the trainer again with the same run name and storage and call
`fit()`; the loop restores model, optimizer, schedule, RNG states, step and MLflow run from
`ray.train.get_checkpoint()`. The data starts a new pass (epoch) over the training set, in a new
order with new patches: the steps after a resume are exact in count and model state, not in the
batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint
from torch import nn

from adaray.checkpoint import MODEL_FILENAME, model_payload, unwrap
from adaray.config import from_dict, to_dict
from adaray.data.ingest import (
    TRAIN,
    VALIDATION,
    fetched_ahead,
    shard_batches,
    validation_samples,
)
from adaray.train.components import TrainData, build_components, prepare_process, train_step
from adaray.train.config import RunSettings, TrainConfig
from adaray.train.validation import validate

STATE_FILENAME = "train_state.pt"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker loop (also runs in-process with ScalingConfig(num_workers=0))."""
    from adaray.tracking import Tracker

    cfg = from_dict(TrainConfig, config["train"])
    run = from_dict(RunSettings, config["run"])
    mlflow_run = config["mlflow"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    _quiet_ray_report_log()
    prepare_process(run.cpus_per_worker, cfg.seed + rank)

    # Data: this worker's shard of the Ray Data training set (adaray.data.ingest); rank 0 also
    # reads the validation pairs. Then model (DDP), optimizer, schedule and loss: the setup
    # every loop shares.
    # The first batch is fetched meanwhile, so the pipeline starts while the model is built.
    batches = fetched_ahead(shard_batches(ray.train.get_dataset_shard(TRAIN), cfg.data))
    data = TrainData(batches, validation_samples(ray.train.get_dataset_shard(VALIDATION))
                     if rank == 0 else [])
    parts = build_components(cfg, data, prepare_model=ray.train.torch.prepare_model,
                             device=ray.train.torch.get_device())
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler

    # Restore: the latest registered checkpoint continues the run exactly where it stopped.
    step, mlflow_run_id, best_score = 0, None, float("-inf")
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILENAME, map_location=parts.device,
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
        tracker = Tracker(mlflow_run["tracking_uri"], mlflow_run["experiment"],
                          artifact_location=mlflow_run["artifact_location"])
        tags = {"task": cfg.task, "git_commit": mlflow_run["git_commit"],
                "ray_job_id": ray.get_runtime_context().get_job_id(), "run_name": run.name,
                "ray_nodes": ",".join(node_ids), "world_size": str(world_size),
                **mlflow_run["tags"]}
        params = {**to_dict(cfg), "run": to_dict(run)}  # run settings as run.<field>
        tracker.start_run(run.name, params, tags, run_id=mlflow_run_id,
                          parent_run_id=mlflow_run["parent_run_id"])

    samples, window_start = 0, time.perf_counter()
    while step < cfg.max_steps:
        loss, terms, batch_size = train_step(parts, cfg.optim.grad_clip)
        step += 1
        samples += batch_size * world_size

        is_ckpt = step % cfg.ckpt_every == 0 or step == cfg.max_steps
        is_val = is_ckpt or step % cfg.val_every == 0
        if not (is_val or step % cfg.log_every == 0):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": samples / max(elapsed, 1e-9), "world_size": world_size,
                   **{f"loss_{k}": float(v) for k, v in terms.items()}}
        samples, window_start = 0, time.perf_counter()
        if is_ckpt:  # a collective: every rank takes part
            metrics["replica_divergence"] = _replica_divergence(model, world_size)
        report_checkpoint = None
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                if is_val:  # validation metrics appear in the reports of validation steps
                    scores, grid = validate(model, parts.data.val_set, cfg.val)
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

def _quiet_ray_report_log() -> None:
    """Stop Ray Train echoing every `ray.train.report` (the whole metrics dict) on the console.

    Ray 2.60 logs each report at INFO from a logger named by its file path, which the root
    logger passes to the console and `LoggingConfig` cannot filter; the loop's own progress line
    (ProgressCallback) says the same in one line. Warnings and errors still show.
    """
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


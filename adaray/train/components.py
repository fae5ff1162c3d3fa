"""The training setup every loop shares: the Ray Train worker loop (`adaray.train.loop`), the
bare loop of bench/train.py and the fixed-budget trials of bench/recipe_trials.py.

`prepare_process` sets the allocator, threads and seeds; `build_components(cfg, data)` builds
model, optimizer, schedule and loss around the training data (`TrainData`: Ray Data shards in
the Ray Train loop, `loader_data` in the bare loops); `train_step` is one optimizer step. A
change to how adaray trains lands here, once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adaray.data import FusionPairDataset, build_datasets
from adaray.losses import FusionLoss
from adaray.model import AdaSFFuse
from adaray.runtime import configure_allocator
from adaray.train.config import OptimConfig, TrainConfig


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def prepare_process(threads: int, seed: int) -> None:
    """Allocator settings (`adaray.runtime`), torch's thread count and the seeds of a process
    that trains."""
    configure_allocator()
    torch.set_num_threads(threads)
    seed_everything(seed)

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


def make_loader(train_set: Dataset, cfg: TrainConfig, world_size: int = 1) -> DataLoader:
    """Shuffled batches of `cfg.data.batch_size`. Incomplete last batches are dropped only
    when every rank gets a full one, so a train split smaller than a batch still trains."""
    return DataLoader(train_set, batch_size=cfg.data.batch_size, shuffle=True,
                      drop_last=len(train_set) >= cfg.data.batch_size * world_size,
                      num_workers=cfg.data.num_workers)


def endless_batches(loader: DataLoader, world_size: int) -> Iterator[dict[str, Any]]:
    """Endless batches, reshuffled each epoch (the distributed sampler needs set_epoch)."""
    epoch = 0
    while True:
        if world_size > 1:
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


@dataclass
class TrainData:
    """What a loop trains on: endless batches {"a", "b": (N, 1, P, P)} and the validation
    samples {"a", "b": (1, H, W)} it scores (empty on ranks that do not validate)."""

    batches: Iterator[dict[str, Any]]
    val_set: Sequence[dict[str, Any]]


def loader_data(cfg: TrainConfig, world_size: int = 1, *, root: str | Path | None = None,
                datasets: tuple[FusionPairDataset, FusionPairDataset] | None = None,
                check: bool = True) -> TrainData:
    """Training data through a PyTorch DataLoader, in this process: the pairs of `root`
    (`build_datasets`, which checks every pair when `check`) or the given `datasets` (train,
    val). The bare loops of bench/ train on it; the Ray Train loop streams with Ray Data
    (`adaray.data.ingest`)."""
    if (root is None) == (datasets is None):
        raise ValueError("loader_data: give the data folder `root` or `datasets`")
    if datasets is None:
        datasets = build_datasets(root, cfg.task, cfg.data, check=check)
    train_set, val_set = datasets
    return TrainData(endless_batches(make_loader(train_set, cfg, world_size), world_size),
                     val_set)


@dataclass
class TrainComponents:
    """What a training loop works with (`build_components`)."""

    data: TrainData
    model: nn.Module  # as wrapped by `prepare_model` (DDP under Ray Train)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: FusionLoss
    device: torch.device

    def autocast(self) -> torch.autocast:
        """bf16 autocast of the forward pass on CUDA; a no-op context on CPU."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


def build_components(
    cfg: TrainConfig, data: TrainData, *, schedule: Callable[[int], float] | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    device: torch.device | None = None,
) -> TrainComponents:
    """Model, optimizer, schedule and loss of `cfg` around its training `data`.

    `schedule` replaces the lr schedule (`build_optimizer`); `prepare_model` wraps the model
    before the optimizer is built (Ray Train's `prepare_model`: device and DDP); `device` is
    where batches go (default CPU).
    """
    model: nn.Module = AdaSFFuse(cfg.model)
    if prepare_model is not None:
        model = prepare_model(model)
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg, schedule)
    return TrainComponents(data, model, optimizer, scheduler,
                           FusionLoss(cfg.loss.resolved(cfg.task)),
                           device or torch.device("cpu"))


def train_step(parts: TrainComponents,
               grad_clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One optimizer step on the next batch: (loss, loss terms, samples in the batch)."""
    batch = next(parts.data.batches)
    a, b = batch["a"].to(parts.device), batch["b"].to(parts.device)
    with parts.autocast():
        fused = parts.model(a, b)
    loss, terms = parts.loss_fn(fused.float(), a, b)
    optimizer_step(loss, parts.model, parts.optimizer, parts.scheduler, grad_clip)
    return loss, terms, a.shape[0]

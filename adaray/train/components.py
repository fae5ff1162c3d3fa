"""The training setup every loop shares: the Ray Train worker loop (`adaray.train.loop`), the
bare loop of bench/train.py and the fixed-budget trials of bench/recipe_trials.py.

`prepare_process` sets the allocator, threads and seeds; `build_components(cfg, world_size)`
builds data, model, optimizer, schedule and loss; `train_step` is one optimizer step. A change
to how adaray trains lands here, once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
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
class TrainComponents:
    """What a training loop works with (`build_components`)."""

    train_set: FusionPairDataset
    val_set: FusionPairDataset
    loader: DataLoader
    model: nn.Module  # as wrapped by `prepare_model` (DDP under Ray Train)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: FusionLoss
    device: torch.device

    def autocast(self) -> torch.autocast:
        """bf16 autocast of the forward pass on CUDA; a no-op context on CPU."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


def build_components(
    cfg: TrainConfig, world_size: int = 1, *, root: str | Path | None = None,
    datasets: tuple[FusionPairDataset, FusionPairDataset] | None = None, check: bool = True,
    schedule: Callable[[int], float] | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    prepare_loader: Callable[[DataLoader], DataLoader] | None = None,
    device: torch.device | None = None,
) -> TrainComponents:
    """Data, model, optimizer, schedule and loss of `cfg` for one of `world_size` ranks.

    The data is the split of the folder `root` (`build_datasets`, which checks every pair when
    `check`), or the given `datasets` (train, val); `schedule` replaces the lr schedule
    (`build_optimizer`).
    `prepare_model` and `prepare_loader` wrap the model and loader before the optimizer is
    built (Ray Train's `prepare_model` / `prepare_data_loader`: device, DDP, sampler);
    `device` is where batches go (default CPU).
    """
    if (root is None) == (datasets is None):
        raise ValueError("build_components: give the data folder `root` or `datasets`")
    if datasets is None:
        datasets = build_datasets(root, cfg.task, cfg.data, check=check)
    train_set, val_set = datasets
    loader = make_loader(train_set, cfg, world_size)
    if prepare_loader is not None:
        loader = prepare_loader(loader)
    model: nn.Module = AdaSFFuse(cfg.model)
    if prepare_model is not None:
        model = prepare_model(model)
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg, schedule)
    return TrainComponents(train_set, val_set, loader, model, optimizer, scheduler,
                           FusionLoss(cfg.loss.resolved(cfg.task)),
                           device or torch.device("cpu"))


def train_step(parts: TrainComponents, batch: dict[str, Any],
               grad_clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One optimizer step on `batch`: (loss, loss terms, samples in the batch)."""
    a, b = batch["a"].to(parts.device), batch["b"].to(parts.device)
    with parts.autocast():
        fused = parts.model(a, b)
    loss, terms = parts.loss_fn(fused.float(), a, b)
    optimizer_step(loss, parts.model, parts.optimizer, parts.scheduler, grad_clip)
    return loss, terms, a.shape[0]

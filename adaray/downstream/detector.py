"""The detector of the downstream benchmark (torchvision), its training and its scoring.

`train_detector` trains one torchvision detector from scratch (or from `--weights`) on one
input's training images, with a seed that fixes the initial weights, the batch order and the
flips, so every input gets the same schedule and augmentation. `predict` runs it on images;
`detection_scores` turns predictions and ground truth into mAP@0.5 and mAP@0.5:0.95, overall
and per class, with torchmetrics' MeanAveragePrecision (COCO evaluation by faster-coco-eval).
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaray.config import ConfigError
from adaray.downstream.labels import Boxes
from adaray.errors import ModelFileError

# On one core here (bench/downstream.py) the default trains 9.4 images/s, the two Faster R-CNN
# variants 1.2 and 0.5: those are for a pretrained `--weights` and a longer budget. All train on
# CPU.
ARCHITECTURES = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
                 "fasterrcnn_mobilenet_v3_large_fpn")


@dataclass(frozen=True)
class DetectorConfig:
    """The detector and its schedule: the same for every input and seed."""

    arch: str = "ssdlite320_mobilenet_v3_large"
    epochs: int = 40  # the default job (3 inputs x 3 seeds) in about an hour on 2 cores
    batch_size: int = 4
    lr: float = 1e-3  # AdamW, linear warm-up then cosine decay to 5 %
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 10.0
    threads: int = 1  # torch threads (and Ray CPUs) per training
    max_images: int | None = None  # cap on training images (the quick run)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"detector.arch: {self.arch!r} is not one of "
                              f"{', '.join(ARCHITECTURES)}")
        for name in ("epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector.{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("detector: lr must be > 0, weight_decay and warmup_steps >= 0")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"detector.max_images: must be >= 1 or null, got {self.max_images}")


def build_detector(arch: str, num_classes: int, weights: str | Path | None = None
                   ) -> tuple[nn.Module, str]:
    """A torchvision detector for `num_classes` classes (plus background), randomly
    initialised, or with the tensors of `weights` that fit it by name and shape (a class head
    of another class count does not). Returns the model and a note on what was loaded."""
    from torchvision.models import detection

    model = getattr(detection, arch)(weights=None, weights_backbone=None,
                                     num_classes=num_classes + 1)
    if weights is None:
        return model, "trained from scratch"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelFileError(f"--weights {weights}: cannot load: {exc}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ModelFileError(f"--weights {weights}: none of its {len(state)} tensors fits "
                             f"{arch} (names or shapes differ)")
    model.load_state_dict(fitting, strict=False)
    return model, f"started from {len(fitting)} of {len(own)} tensors of {Path(weights).name}"


def _tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> float (3, H, W) in [0, 1] (gray repeated)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return torch.tensor(image).permute(2, 0, 1).float() / 255.0  # a copy: Ray's are read-only


def _target(boxes: Boxes) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes.xyxy).float().reshape(-1, 4),
            "labels": torch.tensor(boxes.classes + 1).long()}  # 0 is background


def _flipped(image: torch.Tensor, target: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def train_detector(images: Sequence[np.ndarray], boxes: Sequence[Boxes], num_classes: int,
                   cfg: DetectorConfig, seed: int, weights: str | Path | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[nn.Module, str]:
    """Train a detector on `images` (uint8, gray or RGB) with their boxes; returns it (in eval
    mode) and the note of `build_detector`. `seed` fixes the initial weights, the order of the
    batches and the horizontal flips (p = 0.5)."""
    torch.manual_seed(seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(seed)
    model, note = build_detector(cfg.arch, num_classes, weights)
    count = len(images) if cfg.max_images is None else min(len(images), cfg.max_images)
    steps_per_epoch = math.ceil(count / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        done = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    started, step = time.monotonic(), 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(images))[:count]
        losses = []
        for first in range(0, count, cfg.batch_size):
            batch = []
            for index in order[first:first + cfg.batch_size]:
                image, target = _tensor(images[index]), _target(boxes[index])
                if rng.random() < 0.5:
                    image, target = _flipped(image, target)
                batch.append((image, target))
            loss_terms = model([b[0] for b in batch], [b[1] for b in batch])
            loss = sum(loss_terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(f"epoch {epoch + 1}/{cfg.epochs}  loss {np.mean(losses):.3f}  "
                     f"{step * cfg.batch_size / max(elapsed, 1e-9):.2f} img/s  "
                     f"ETA {elapsed / step * (total - step):.0f} s")
    return model.eval(), note


@torch.inference_mode()
def predict(model: nn.Module, images: Sequence[np.ndarray], batch_size: int = 4
            ) -> list[dict[str, np.ndarray]]:
    """Detections per image: boxes (N, 4) xyxy pixels, scores (N,), classes (N,) from 0."""
    model.eval()
    found = []
    for first in range(0, len(images), batch_size):
        outputs = model([_tensor(image) for image in images[first:first + batch_size]])
        found.extend({"boxes": o["boxes"].numpy(), "scores": o["scores"].numpy(),
                      "classes": o["labels"].numpy() - 1} for o in outputs)
    return found


def detection_scores(predictions: Sequence[dict[str, np.ndarray]], truth: Sequence[Boxes],
                     classes: Sequence[str]) -> dict[str, Any]:
    """mAP@0.5 and mAP@0.5:0.95 over the images, overall (mean over the classes present in the
    ground truth or the predictions, COCO's rule) and per class ({name: value}; NaN for a class
    absent from both)."""
    from torchmetrics.detection import MeanAveragePrecision

    preds = [{"boxes": torch.as_tensor(p["boxes"]).float().reshape(-1, 4),
              "scores": torch.as_tensor(p["scores"]).float(),
              "labels": torch.as_tensor(p["classes"]).long()} for p in predictions]
    targets = [{"boxes": torch.tensor(t.xyxy).float().reshape(-1, 4),
                "labels": torch.tensor(t.classes).long()} for t in truth]
    scores: dict[str, Any] = {}
    for key, thresholds in (("map_50", [0.5]), ("map", None)):
        metric = MeanAveragePrecision(iou_thresholds=thresholds, class_metrics=True,
                                      backend="faster_coco_eval")
        metric.update(preds, targets)
        result = metric.compute()
        scores[key] = float(result["map"])
        per_class = dict.fromkeys(classes, float("nan"))
        ids = result["classes"].reshape(-1).tolist()
        values = result["map_per_class"].reshape(-1).tolist()
        for class_id, value in zip(ids, values, strict=True):
            per_class[classes[class_id]] = float(value) if value >= 0 else float("nan")
        scores[f"{key}_per_class"] = per_class
    return scores

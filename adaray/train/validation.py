"""Validation during training: fusion metrics of full-size validation pairs, their `val_score`
(the objective of checkpoints and sweeps) and the A | B | fused grid logged to MLflow."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from adaray import metrics as fusion_metrics
from adaray.checkpoint import unwrap
from adaray.data import FusionPairDataset, merge_luma
from adaray.train.config import ValConfig

# val_score = mean over pairs of the mean of metric / scale: each term lies in about [0, 1].
VAL_SCORE_SCALES = {"Qabf": 1.0, "VIF": 2.0, "SSIM": 2.0}


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

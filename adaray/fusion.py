"""Fuse image arrays with a model: luma through the network, chroma rebuilt per MODEL.md.

This is the one inference path; the CLI, evaluation and serving call `fuse_arrays`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adaray.data.color import fuse_chroma, merge_luma, split_luma


def fuse_luma(model: nn.Module, y_a: np.ndarray, y_b: np.ndarray) -> np.ndarray:
    """Fuse two (H, W) luma planes in [0, 1] with `model` in eval mode; returns (H, W) in [0, 1]."""
    param = next(model.parameters())
    a, b = (
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None, None].to(param.device)
        for y in (y_a, y_b)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            fused = model(a, b)
    finally:
        model.train(was_training)
    return fused[0, 0].clamp(0, 1).float().cpu().numpy()


def fuse_arrays(model: nn.Module, img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
    """Fuse two images (H,W) or (H,W,3) float in [0,1]; color output when a source is color."""
    if img_a.shape[:2] != img_b.shape[:2]:
        raise ValueError(f"source sizes differ: {img_a.shape[:2]} vs {img_b.shape[:2]}")
    y_a, cbcr_a = split_luma(img_a)
    y_b, cbcr_b = split_luma(img_b)
    return merge_luma(fuse_luma(model, y_a, y_b), fuse_chroma(cbcr_a, cbcr_b))

"""Fuse image arrays with a model: luma through the network, chroma rebuilt per MODEL.md.

This is the one inference path: the CLI and evaluation call `fuse_arrays` (or
`fuse_with_weights`, which also returns the weight map of a head that composes the sources),
serving calls `fuse_batch` for same-size requests it has grouped (the same code, N pairs per
forward pass).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adaray.data.color import fuse_chroma, merge_luma, split_luma
from adaray.errors import DataError


def fuse_luma_batch(model: nn.Module, y_a: np.ndarray, y_b: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Fuse (N, H, W) luma stacks in [0, 1] in one forward pass, in eval mode: (fused (N, H, W)
    in [0, 1], the weight of A per pixel (N, H, W) for a head that composes the sources (a
    pyramid head's finest level), else None)."""
    param = next(model.parameters(), None)  # classical baselines have none: CPU
    device = param.device if param is not None else torch.device("cpu")
    a, b = (
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[:, None].to(device)
        for y in (y_a, y_b)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if hasattr(model, "forward_with_maps"):
                fused, maps = model.forward_with_maps(a, b)
            else:
                fused, maps = model(a, b), None
    finally:
        model.train(was_training)
    weights = None if maps is None else maps[:, 0].float().cpu().numpy()
    return fused[:, 0].clamp(0, 1).float().cpu().numpy(), weights


def fuse_arrays(model: nn.Module, img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
    """Fuse two images (H,W) or (H,W,3) float in [0,1]; color output when a source is color."""
    return fuse_batch(model, [(img_a, img_b)])[0]


def fuse_with_weights(model: nn.Module, img_a: np.ndarray, img_b: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """`fuse_arrays`, plus the (H, W) weight map of A (None for heads that do not compose)."""
    (fused,), weights = _fuse(model, [(img_a, img_b)])
    return fused, None if weights is None else weights[0]


def fuse_batch(model: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Fuse pairs of images of one size in a single forward pass (as `fuse_arrays` does each)."""
    return _fuse(model, pairs)[0]


def _fuse(model: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]]
          ) -> tuple[list[np.ndarray], np.ndarray | None]:
    for img_a, img_b in pairs:
        if img_a.shape[:2] != img_b.shape[:2]:
            raise DataError(f"source sizes differ: {img_a.shape[:2]} vs {img_b.shape[:2]}")
    if len({img_a.shape[:2] for img_a, _ in pairs}) > 1:
        raise ValueError("fuse_batch needs pairs of one size; fuse other sizes separately")
    split = [(split_luma(img_a), split_luma(img_b)) for img_a, img_b in pairs]
    fused, weights = fuse_luma_batch(model, np.stack([ya for (ya, _), _ in split]),
                                     np.stack([yb for _, (yb, _) in split]))
    images = [merge_luma(y, fuse_chroma(cbcr_a, cbcr_b))
              for y, ((_, cbcr_a), (_, cbcr_b)) in zip(fused, split, strict=True)]
    return images, weights

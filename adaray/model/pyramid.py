"""Gaussian and Laplacian pyramids in PyTorch (Burt-Adelson), for the pyramid head.

`pyr_down` and `pyr_up` are OpenCV's `pyrDown` / `pyrUp` (the 5-tap binomial kernel, borders
reflected without repeating the edge, BORDER_REFLECT_101), so a Laplacian pyramid here equals
`adaray.baselines`' classical one. `blend_pyramids` is the Mertens-style blend: the Laplacian
levels of two images weighted by the Gaussian pyramid of a weight map, then collapsed; with a
constant weight w it returns w * a + (1 - w) * b (the pyramid reconstructs exactly). With
`detail="larger"` each band-pass coefficient is taken from the source whose coefficient is
larger in magnitude (the classical Laplacian rule) and the map weights the base only; with
w = 0.5 that is `adaray.baselines.fuse_laplacian`.
`blend_pyramids_ref` is the plain reference the tests compare against: OpenCV on NumPy planes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _kernel(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5x5 binomial blur of (N, C, H, W), reflect-101 borders, same size."""
    n, c, h, w = x.shape
    k = _kernel(x)
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5))
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1))
    return flat.reshape(n, c, h, w)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur, then keep every second row and column: (H, W) -> (ceil(H/2), ceil(W/2))."""
    return _blur(x)[..., ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample to `size` (2h or 2h - 1 rows, likewise columns) as OpenCV's pyrUp does: zeros
    between the samples, then the binomial blur scaled by 4. Like pyrUp, the source is padded
    before the zeros go in: reflected at the top and left, its last sample repeated at the
    bottom and right."""
    n, c, h, w = x.shape
    height, width = size
    padded = F.pad(x.reshape(n * c, 1, h, w), (1, 0, 1, 0), mode="reflect")
    padded = F.pad(padded, (0, 1, 0, 1), mode="replicate")
    up = padded.new_zeros(n * c, 1, 2 * (h + 2), 2 * (w + 2))
    up[..., ::2, ::2] = padded
    k = _kernel(x) * 2.0
    up = F.conv2d(up, k.view(1, 1, 1, 5))
    up = F.conv2d(up, k.view(1, 1, 5, 1))
    return up[..., :height, :width].reshape(n, c, height, width)


def pyramid_levels(height: int, width: int, levels: int) -> int:
    """The levels a (height, width) image allows: at most `levels`, and the coarsest level
    keeps at least 4 pixels a side (the pyramid head and `adaray.baselines.fuse_laplacian`)."""
    return max(0, min(levels, int(math.log2(min(height, width))) - 1))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """`levels` band-pass levels, finest first, then the low-pass base."""
    pyramid, current = [], x
    for _ in range(levels):
        smaller = pyr_down(current)
        pyramid.append(current - pyr_up(smaller, current.shape[-2:]))
        current = smaller
    pyramid.append(current)
    return pyramid


def blend_pyramids(a: torch.Tensor, b: torch.Tensor, maps: torch.Tensor,
                   levels: int, detail: str = "map") -> torch.Tensor:
    """Blend the Laplacian pyramids of a and b (N, 1, H, W) with weights in [0, 1].

    `maps` is (N, 1, H, W): one map whose Gaussian pyramid weights every level; or
    (N, levels + 1, H, W): map k, taken down k times, weights level k (the last the base).
    `levels` is capped by the image size (`pyramid_levels`); extra maps are then unused.
    `detail="larger"` weights each band-pass coefficient 1 for the source whose coefficient is
    larger in magnitude (ties: a) and 0 for the other; one map then weights the base.
    """
    levels = pyramid_levels(a.shape[-2], a.shape[-1], levels)
    per_level = maps.shape[1] > 1
    pyramid_a, pyramid_b = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    weights: list[torch.Tensor] = []
    for k in range(levels + 1):
        if per_level:
            current = maps[:, -1:] if k == levels else maps[:, k:k + 1]
            for _ in range(k):
                current = pyr_down(current)
        else:
            current = maps[:, :1] if k == 0 else pyr_down(weights[-1])
        weights.append(current)
    if detail == "larger":
        weights[:levels] = [(la.abs() >= lb.abs()).to(a.dtype)
                            for la, lb in zip(pyramid_a[:levels], pyramid_b[:levels],
                                              strict=True)]
    out = weights[-1] * pyramid_a[-1] + (1 - weights[-1]) * pyramid_b[-1]
    for k in reversed(range(levels)):
        out = pyr_up(out, pyramid_a[k].shape[-2:])
        out = out + weights[k] * pyramid_a[k] + (1 - weights[k]) * pyramid_b[k]
    return out


def blend_pyramids_ref(a: np.ndarray, b: np.ndarray, maps: np.ndarray,
                       levels: int, detail: str = "map") -> np.ndarray:
    """`blend_pyramids` of (H, W) planes and (M, H, W) maps with OpenCV, for the tests."""
    import cv2

    from adaray.baselines import _laplacian_pyramid

    levels = pyramid_levels(a.shape[0], a.shape[1], levels)
    pyramid_a, pyramid_b = _laplacian_pyramid(a, levels), _laplacian_pyramid(b, levels)
    weights: list[np.ndarray] = []
    for k in range(levels + 1):
        if len(maps) > 1:
            current = maps[-1] if k == levels else maps[k]
            for _ in range(k):
                current = cv2.pyrDown(current)
        else:
            current = maps[0] if k == 0 else cv2.pyrDown(weights[-1])
        weights.append(current)
    if detail == "larger":
        weights[:levels] = [(np.abs(la) >= np.abs(lb)).astype(a.dtype)
                            for la, lb in zip(pyramid_a[:levels], pyramid_b[:levels],
                                              strict=True)]
    out = weights[-1] * pyramid_a[-1] + (1 - weights[-1]) * pyramid_b[-1]
    for k in reversed(range(levels)):
        out = cv2.pyrUp(out, dstsize=pyramid_a[k].shape[::-1])
        out = out + weights[k] * pyramid_a[k] + (1 - weights[k]) * pyramid_b[k]
    return out

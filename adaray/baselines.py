"""Classical fusion baselines, usable wherever a model is.

Each baseline is an `nn.Module` without parameters whose `forward(a, b)` takes and returns
(N, 1, H, W) luma in [0, 1], like `AdaSFFuse`; so `adaray.fusion.fuse_arrays` (color rebuilt from
the sources' chroma as for the model), `adaray evaluate` and the Serve app treat them alike.
`get_baseline("dwt")` or the URI form `baseline:dwt` selects one.

- average: (A + B) / 2.
- max: the brighter pixel.
- dwt: Haar wavelet, 3 levels; approximation averaged, details by larger magnitude.
- laplacian: Laplacian pyramid (OpenCV pyrDown/pyrUp, 4 levels); base averaged, details by
  larger magnitude.
- mertens: OpenCV's Mertens exposure fusion (`cv2.createMergeMertens`), for MEF, on the luma
  (contrast and well-exposedness weights; saturation is 0 for gray planes).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from torch import nn

from adaray.errors import ConfigError
from adaray.model.pyramid import pyramid_levels

BASELINE_PREFIX = "baseline:"
LumaFuser = Callable[[np.ndarray, np.ndarray], np.ndarray]  # two (H, W) planes -> one


def fuse_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel-wise mean of two (H, W) planes."""
    return (a + b) / 2


def fuse_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel-wise maximum of two (H, W) planes."""
    return np.maximum(a, b)


def pick_larger(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per pixel, whichever of `x` and `y` has the larger magnitude (ties: `x`)."""
    return np.where(np.abs(x) >= np.abs(y), x, y)


def _haar_step(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One orthonormal 2-D Haar step of an even-sized plane: approximation and 3 details."""
    p, q = x[0::2, 0::2], x[0::2, 1::2]
    r, s = x[1::2, 0::2], x[1::2, 1::2]
    return (p + q + r + s) / 2, ((p - q + r - s) / 2, (p + q - r - s) / 2, (p - q - r + s) / 2)


def _haar_inverse(approx: np.ndarray, details: tuple[np.ndarray, ...]) -> np.ndarray:
    horizontal, vertical, diagonal = details
    out = np.empty((approx.shape[0] * 2, approx.shape[1] * 2), approx.dtype)
    out[0::2, 0::2] = (approx + horizontal + vertical + diagonal) / 2
    out[0::2, 1::2] = (approx - horizontal + vertical - diagonal) / 2
    out[1::2, 0::2] = (approx + horizontal - vertical - diagonal) / 2
    out[1::2, 1::2] = (approx - horizontal - vertical + diagonal) / 2
    return out


def fuse_dwt(a: np.ndarray, b: np.ndarray, levels: int = 3) -> np.ndarray:
    """Haar DWT fusion: approximations averaged, detail coefficients by larger magnitude.

    Planes are padded (edge-replicated) to a multiple of 2**levels and cropped back.
    """
    height, width = a.shape
    block = 2**levels
    pad = ((0, -height % block), (0, -width % block))
    x, y = np.pad(a, pad, mode="edge"), np.pad(b, pad, mode="edge")
    fused_details = []
    for _ in range(levels):
        x, details_x = _haar_step(x)
        y, details_y = _haar_step(y)
        fused_details.append(tuple(pick_larger(u, v)
                                   for u, v in zip(details_x, details_y, strict=True)))
    out = (x + y) / 2
    for details in reversed(fused_details):
        out = _haar_inverse(out, details)
    return out[:height, :width]


def _laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyramid, current = [], x
    for _ in range(levels):
        smaller = cv2.pyrDown(current)
        pyramid.append(current - cv2.pyrUp(smaller, dstsize=current.shape[::-1]))
        current = smaller
    pyramid.append(current)
    return pyramid


def fuse_laplacian(
    a: np.ndarray, b: np.ndarray, levels: int = 4, base: LumaFuser = fuse_average
) -> np.ndarray:
    """Laplacian pyramid fusion: bases combined by `base` (averaged), band-pass levels by
    larger magnitude.

    Fewer levels are used when the image is too small for `levels` halvings.
    """
    levels = pyramid_levels(a.shape[0], a.shape[1], levels)
    pa = _laplacian_pyramid(a.astype(np.float32), levels)
    pb = _laplacian_pyramid(b.astype(np.float32), levels)
    out = base(pa[-1], pb[-1])
    for la, lb in zip(reversed(pa[:-1]), reversed(pb[:-1]), strict=True):
        out = cv2.pyrUp(out, dstsize=la.shape[::-1]) + pick_larger(la, lb)
    return out


def fuse_mertens(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OpenCV's Mertens exposure fusion of two luma planes (as 8-bit gray exposures)."""
    exposures = [cv2.cvtColor(np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8),
                              cv2.COLOR_GRAY2BGR) for x in (a, b)]
    # Saturation weight 0: the exposures are gray (luma), whose saturation is 0 everywhere.
    merge = cv2.createMergeMertens(contrast_weight=1.0, saturation_weight=0.0,
                                   exposure_weight=1.0)
    return merge.process(exposures)[:, :, 0]


LUMA_FUSERS: dict[str, LumaFuser] = {
    "average": fuse_average,
    "max": fuse_max,
    "dwt": fuse_dwt,
    "laplacian": fuse_laplacian,
    "mertens": fuse_mertens,
}


def baselines_for(task: str) -> list[str]:
    """The baselines a task is compared with, as `baseline:NAME` sources (Mertens: MEF only)."""
    return [f"{BASELINE_PREFIX}{name}" for name in LUMA_FUSERS
            if name != "mertens" or task == "mef"]


class Baseline(nn.Module):
    """A classical fusion rule behind the model interface: forward((N,1,H,W), (N,1,H,W))."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in LUMA_FUSERS:
            raise ConfigError(f"unknown baseline {name!r} (known: {', '.join(LUMA_FUSERS)})")
        self.name = name
        self.fuse_plane = LUMA_FUSERS[name]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fuse each pair of the batch on the CPU; result clipped to [0, 1], same size."""
        planes = [np.clip(self.fuse_plane(x[0].double().cpu().numpy(),
                                          y[0].double().cpu().numpy()), 0, 1)
                  for x, y in zip(a, b, strict=True)]
        return torch.from_numpy(np.stack(planes)[:, None]).to(a.device, a.dtype)


def get_baseline(name: str) -> Baseline:
    """A baseline by name, or by URI `baseline:NAME`."""
    return Baseline(name.removeprefix(BASELINE_PREFIX))

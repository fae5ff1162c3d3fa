"""Color conversion for fusion: the one place train, serve and evaluate convert color.

The network fuses luma only (MODEL.md, "Color"). Images are floats in [0, 1]; YCbCr is ITU-R
BT.601 full range (the JPEG convention): Y in [0, 1], Cb and Cr centred on 0.5.

All functions accept numpy arrays or torch tensors and return the same kind. `rgb_to_ycbcr` and
`ycbcr_to_rgb` take any shape with 3 channels on `channel_axis` (last by default; pass 1 for
(N, 3, H, W) tensors). `split_luma`, `fuse_chroma` and `merge_luma` work on images laid out as
`read_image` returns them: (H, W) gray or (H, W, 3) RGB, chroma as (H, W, 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

KR = 0.299  # BT.601 luma weight of red
KB = 0.114  # BT.601 luma weight of blue
KG = 1.0 - KR - KB
NEUTRAL_CHROMA = 0.5


def _channels(image: Array, axis: int) -> Sequence[Array]:
    if image.shape[axis] != 3:
        raise ValueError(f"expected 3 channels on axis {axis}, got shape {tuple(image.shape)}")
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise TypeError(f"expected a floating-point tensor in [0, 1], got {image.dtype}")
        return image.unbind(axis)
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"expected a floating-point array in [0, 1], got {image.dtype}")
    return tuple(np.moveaxis(image, axis, 0))


def _stack(parts: Sequence[Array], axis: int) -> Array:
    if isinstance(parts[0], torch.Tensor):
        return torch.stack(tuple(parts), dim=axis)
    return np.stack(parts, axis=axis)


def _where(condition: Array, value: float, otherwise: Array) -> Array:
    if isinstance(otherwise, torch.Tensor):
        return torch.where(condition, value, otherwise)
    return np.where(condition, value, otherwise)


def rgb_to_ycbcr(rgb: Array, channel_axis: int = -1) -> Array:
    """RGB in [0, 1] -> YCbCr (BT.601 full range), same shape and type."""
    r, g, b = _channels(rgb, channel_axis)
    y = KR * r + KG * g + KB * b
    cb = (b - y) / (2.0 * (1.0 - KB)) + NEUTRAL_CHROMA
    cr = (r - y) / (2.0 * (1.0 - KR)) + NEUTRAL_CHROMA
    return _stack((y, cb, cr), channel_axis)


def ycbcr_to_rgb(ycbcr: Array, channel_axis: int = -1) -> Array:
    """YCbCr (BT.601 full range) -> RGB, same shape and type; not clipped."""
    y, cb, cr = _channels(ycbcr, channel_axis)
    r = y + 2.0 * (1.0 - KR) * (cr - NEUTRAL_CHROMA)
    b = y + 2.0 * (1.0 - KB) * (cb - NEUTRAL_CHROMA)
    g = (y - KR * r - KB * b) / KG
    return _stack((r, g, b), channel_axis)


def split_luma(image: Array) -> tuple[Array, Array | None]:
    """(H, W) gray -> (image, None); (H, W, 3) RGB -> (Y as (H, W), CbCr as (H, W, 2))."""
    if image.ndim == 2:
        return image, None
    if image.ndim == 3 and image.shape[-1] == 3:
        ycbcr = rgb_to_ycbcr(image)
        return ycbcr[..., 0], ycbcr[..., 1:]
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {tuple(image.shape)}")


def fuse_chroma(cbcr_a: Array | None, cbcr_b: Array | None) -> Array | None:
    """Chroma of the fused image from the sources' chroma (None for a gray source).

    One color source: its chroma. Two: per pixel and channel, each source weighted by its
    distance from neutral, c = (c1*|c1-0.5| + c2*|c2-0.5|) / (|c1-0.5| + |c2-0.5|), and 0.5
    where both are neutral. No color source: None (the fused image stays gray).
    """
    if cbcr_a is None or cbcr_b is None:
        return cbcr_b if cbcr_a is None else cbcr_a
    if cbcr_a.shape != cbcr_b.shape:
        raise ValueError(f"chroma shapes differ: {tuple(cbcr_a.shape)} vs {tuple(cbcr_b.shape)}")
    weight_a = abs(cbcr_a - NEUTRAL_CHROMA)
    weight_b = abs(cbcr_b - NEUTRAL_CHROMA)
    total = weight_a + weight_b
    both_neutral = total == 0
    fused = (cbcr_a * weight_a + cbcr_b * weight_b) / _where(both_neutral, 1.0, total)
    return _where(both_neutral, NEUTRAL_CHROMA, fused)


def merge_luma(y: Array, cbcr: Array | None) -> Array:
    """Rebuild an image from fused luma (H, W) and chroma (H, W, 2): (H, W) gray when `cbcr` is
    None, else (H, W, 3) RGB; clipped to [0, 1]."""
    if cbcr is None:
        return y.clip(0.0, 1.0)
    if tuple(cbcr.shape) != (*y.shape, 2):
        raise ValueError(f"chroma shape {tuple(cbcr.shape)} does not match luma {tuple(y.shape)}")
    rgb = ycbcr_to_rgb(_stack((y, cbcr[..., 0], cbcr[..., 1]), -1))
    return rgb.clip(0.0, 1.0)

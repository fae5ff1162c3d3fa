"""BT.601 full-range color conversion and the chroma rules of MODEL.md ("Color")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaray.data.color import fuse_chroma, merge_luma, rgb_to_ycbcr, split_luma, ycbcr_to_rgb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_numpy(dtype: type) -> None:
    rgb = np.random.default_rng(0).random((17, 23, 3)).astype(dtype)
    ycbcr = rgb_to_ycbcr(rgb)
    assert ycbcr.dtype == dtype and ycbcr.shape == rgb.shape
    assert np.abs(ycbcr_to_rgb(ycbcr) - rgb).max() < 1e-6


def test_round_trip_torch_channel_first() -> None:
    rgb = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    ycbcr = rgb_to_ycbcr(rgb, channel_axis=1)
    assert isinstance(ycbcr, torch.Tensor) and ycbcr.shape == rgb.shape
    assert (ycbcr_to_rgb(ycbcr, channel_axis=1) - rgb).abs().max() < 1e-6
    # the same numbers as the numpy path
    expected = rgb_to_ycbcr(rgb.permute(0, 2, 3, 1).numpy())
    assert np.allclose(ycbcr.permute(0, 2, 3, 1).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("rgb", "ycbcr"),
    [
        ((1, 0, 0), (0.299, 0.5 - 0.168736, 1.0)),
        ((0, 1, 0), (0.587, 0.5 - 0.331264, 0.5 - 0.418688)),
        ((0, 0, 1), (0.114, 1.0, 0.5 - 0.081312)),
        ((1, 1, 1), (1.0, 0.5, 0.5)),
        ((0, 0, 0), (0.0, 0.5, 0.5)),
        ((0.3, 0.3, 0.3), (0.3, 0.5, 0.5)),
    ],
)
def test_known_values(rgb: tuple[float, ...], ycbcr: tuple[float, ...]) -> None:
    assert np.allclose(rgb_to_ycbcr(np.array(rgb, dtype=np.float64)), ycbcr, atol=1e-6)
    assert np.allclose(ycbcr_to_rgb(np.array(ycbcr, dtype=np.float64)), rgb, atol=1e-5)


def test_rejects_integer_images_and_wrong_channel_count() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        rgb_to_ycbcr(np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_ycbcr(np.zeros((2, 2, 4), dtype=np.float32))


def test_split_luma() -> None:
    gray = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    y, cbcr = split_luma(gray)
    assert y is gray and cbcr is None

    rgb = np.random.default_rng(2).random((5, 6, 3)).astype(np.float32)
    y, cbcr = split_luma(rgb)
    assert y.shape == (5, 6) and cbcr is not None and cbcr.shape == (5, 6, 2)
    assert np.allclose(y, rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), atol=1e-6)

    with pytest.raises(ValueError, match="shape"):
        split_luma(np.zeros((5, 6, 2), dtype=np.float32))


def test_fuse_chroma_one_or_no_color_source() -> None:
    cbcr = np.full((3, 4, 2), 0.7, dtype=np.float32)
    assert fuse_chroma(cbcr, None) is cbcr
    assert fuse_chroma(None, cbcr) is cbcr
    assert fuse_chroma(None, None) is None


def test_fuse_chroma_weights_by_distance_from_neutral() -> None:
    c1 = np.array([[[0.7, 0.5], [0.9, 0.2]]], dtype=np.float32)
    c2 = np.array([[[0.4, 0.5], [0.5, 0.8]]], dtype=np.float32)
    # (0.7*0.2 + 0.4*0.1) / 0.3 = 0.6; both neutral -> 0.5; one neutral -> the other;
    # equal distances on opposite sides -> their mean
    expected = np.array([[[0.6, 0.5], [0.9, 0.5]]], dtype=np.float32)
    fused = fuse_chroma(c1, c2)
    assert fused.dtype == np.float32
    assert np.allclose(fused, expected, atol=1e-6)
    assert fused[0, 0, 1] == 0.5  # exactly neutral, no division by zero

    fused_torch = fuse_chroma(torch.from_numpy(c1), torch.from_numpy(c2))
    assert isinstance(fused_torch, torch.Tensor)
    assert np.allclose(fused_torch.numpy(), expected, atol=1e-6)


def test_fuse_chroma_formula_on_random_values() -> None:
    rng = np.random.default_rng(3)
    c1, c2 = rng.random((2, 8, 8, 2))
    w1, w2 = np.abs(c1 - 0.5), np.abs(c2 - 0.5)
    assert np.allclose(fuse_chroma(c1, c2), (c1 * w1 + c2 * w2) / (w1 + w2))
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_chroma(c1, c2[:4])


def test_merge_luma() -> None:
    rgb = np.random.default_rng(4).random((6, 7, 3)).astype(np.float32)
    y, cbcr = split_luma(rgb)
    assert np.abs(merge_luma(y, cbcr) - rgb).max() < 1e-6

    gray = np.linspace(-0.5, 1.5, 12, dtype=np.float32).reshape(3, 4)
    merged = merge_luma(gray, None)
    assert merged.shape == (3, 4) and merged.min() == 0.0 and merged.max() == 1.0

    saturated = merge_luma(np.ones((2, 2), np.float32), np.full((2, 2, 2), 0.9, np.float32))
    assert saturated.shape == (2, 2, 3) and saturated.min() >= 0.0 and saturated.max() <= 1.0

    with pytest.raises(ValueError, match="does not match"):
        merge_luma(y, cbcr[:3])


def test_merge_luma_torch() -> None:
    y = torch.full((4, 4), 0.5)
    cbcr = torch.full((4, 4, 2), 0.5)
    merged = merge_luma(y, cbcr)
    assert isinstance(merged, torch.Tensor) and merged.shape == (4, 4, 3)
    assert torch.allclose(merged, torch.full((4, 4, 3), 0.5))

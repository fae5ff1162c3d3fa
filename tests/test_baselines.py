"""Classical baselines on the bundled real pairs: the model interface, shapes, range, quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLES

from adaray.baselines import LUMA_FUSERS, fuse_dwt, fuse_laplacian, get_baseline
from adaray.data import discover_pairs, read_image
from adaray.fusion import fuse_arrays
from adaray.loading import load_model_from
from adaray.metrics import evaluate_images

FOLDERS = {"ivf": "IVF", "mef": "MEF", "mff": "MFF", "mif": "MIF"}


def _pairs(task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(read_image(p.a_path), read_image(p.b_path))
            for p in discover_pairs(SAMPLES / FOLDERS[task], task)]


def _qabf(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return evaluate_images(fused, a, b, ["Qabf"])["Qabf"]


@pytest.mark.parametrize("name", list(LUMA_FUSERS))
@pytest.mark.parametrize("task", list(FOLDERS))
def test_baseline_keeps_size_color_and_range_on_real_pairs(name, task):
    for a, b in _pairs(task):
        fused = fuse_arrays(get_baseline(name), a, b)
        color = a.ndim == 3 or b.ndim == 3
        assert fused.shape == (a.shape[:2] + ((3,) if color else ()))
        assert fused.dtype == np.float32 or fused.dtype == np.float64
        assert fused.min() >= 0.0 and fused.max() <= 1.0 and np.isfinite(fused).all()
        assert fused.std() > 0.01  # an image, not a constant


@pytest.mark.parametrize("name", ["dwt", "laplacian"])
@pytest.mark.parametrize("task", ["ivf", "mff"])
def test_multiscale_baselines_beat_the_plain_average_on_qabf(name, task):
    pairs = _pairs(task)
    ours = np.mean([_qabf(fuse_arrays(get_baseline(name), a, b), a, b) for a, b in pairs])
    average = np.mean([_qabf(fuse_arrays(get_baseline("average"), a, b), a, b)
                       for a, b in pairs])
    assert ours > average, (ours, average)


def test_mertens_beats_the_average_on_multi_exposure_pairs():
    pairs = _pairs("mef")
    mertens = np.mean([_qabf(fuse_arrays(get_baseline("mertens"), a, b), a, b)
                       for a, b in pairs])
    average = np.mean([_qabf(fuse_arrays(get_baseline("average"), a, b), a, b)
                       for a, b in pairs])
    assert mertens > average, (mertens, average)


@pytest.mark.parametrize("shape", [(37, 53), (8, 8), (2, 5)])
def test_multiscale_rules_reconstruct_an_image_fused_with_itself(shape):
    x = np.random.default_rng(0).random(shape)
    assert np.abs(fuse_dwt(x, x) - x).max() < 1e-12
    assert np.abs(fuse_laplacian(x, x) - x).max() < 1e-5


def test_baselines_have_the_model_interface():
    a, b = torch.rand(2, 1, 9, 14), torch.rand(2, 1, 9, 14)
    fused = load_model_from("baseline:max")(a, b)
    assert fused.shape == a.shape and torch.equal(fused, torch.maximum(a, b))
    with pytest.raises(ValueError, match="unknown baseline 'median'"):
        get_baseline("baseline:median")

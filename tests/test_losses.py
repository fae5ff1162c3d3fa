"""Fusion losses: analytic cases and the task table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLES

from adaray.config import ConfigError, from_dict
from adaray.losses import (
    FusionLoss,
    LossConfig,
    focus_target,
    sobel_magnitude,
    ssim,
    vif,
)
from adaray.tasks import TASKS


@pytest.fixture
def pair():
    torch.manual_seed(0)
    return torch.rand(3, 1, 32, 40), torch.rand(3, 1, 32, 40)


@pytest.mark.parametrize("task", [t for t, s in TASKS.items() if s.intensity_target == "max"])
def test_max_target_tasks_have_zero_intensity_loss_for_max(task, pair):
    a, b = pair
    _, terms = FusionLoss(LossConfig.for_task(task))(torch.maximum(a, b), a, b)
    assert terms["int"].item() == 0.0


@pytest.mark.parametrize("task", [t for t, s in TASKS.items() if s.intensity_target == "mean"])
def test_mean_target_tasks_have_zero_intensity_loss_for_mean(task, pair):
    a, b = pair
    _, terms = FusionLoss(LossConfig.for_task(task))((a + b) / 2, a, b)
    assert terms["int"].item() == 0.0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_identical_images_give_zero_ssim_and_total_loss(task, pair):
    a, _ = pair
    total, terms = FusionLoss(LossConfig.for_task(task))(a, a, a)
    assert terms["ssim"].item() == pytest.approx(1.0, abs=1e-6)
    assert terms["grad"].item() == 0.0
    assert total.item() == pytest.approx(0.0, abs=1e-4)


def test_ssim_is_one_for_equal_images_and_lower_otherwise(pair):
    a, b = pair
    torch.testing.assert_close(ssim(a, a), torch.ones(3))
    assert (ssim(a, b) < 0.5).all()


def test_gradient_weights_sum_to_one_and_favour_the_sharper_source(pair):
    a, _ = pair
    flat = torch.full_like(a, 0.5)
    loss = FusionLoss(LossConfig.for_task("ivf"))
    weights = loss.ssim_weights(sobel_magnitude(a), sobel_magnitude(a * 0.25))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(weights[:, 0], torch.full((3,), 0.8))
    neutral = loss.ssim_weights(sobel_magnitude(flat), sobel_magnitude(flat))
    torch.testing.assert_close(neutral, torch.full((3, 2), 0.5))
    equal_weighting = FusionLoss(LossConfig.for_task("mef"))
    equal = equal_weighting.ssim_weights(sobel_magnitude(a), sobel_magnitude(flat))
    torch.testing.assert_close(equal, torch.full((3, 2), 0.5))


def test_total_is_the_weighted_sum_of_terms(pair):
    a, b = pair
    fused = (a + b) / 2
    cfg = LossConfig.for_task("mif")
    total, terms = FusionLoss(cfg)(fused, a, b)
    expected = (
        cfg.w_int * terms["int"] + cfg.w_grad * terms["grad"] + cfg.w_ssim * (1 - terms["ssim"])
    )
    torch.testing.assert_close(total.detach(), expected)


def test_loss_backpropagates(pair):
    a, b = pair
    fused = torch.rand_like(a, requires_grad=True)
    total, _ = FusionLoss(LossConfig.for_task("mff"))(fused, a, b)
    total.backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0


def test_task_defaults_come_from_the_table_and_overrides_win():
    for name, spec in TASKS.items():
        cfg = LossConfig.for_task(name)
        assert (cfg.w_int, cfg.w_grad, cfg.w_ssim) == (spec.w_int, spec.w_grad, spec.w_ssim)
        assert cfg.intensity_target == spec.intensity_target
    assert LossConfig.for_task("mif").w_grad == 100
    custom = LossConfig(w_ssim=3.0).resolved("mif")
    assert custom.w_ssim == 3.0 and custom.w_grad == 100


def test_unresolved_or_negative_config_is_rejected():
    with pytest.raises(ConfigError, match="w_int"):
        FusionLoss(LossConfig())
    with pytest.raises(ConfigError, match="w_grad"):
        from_dict(LossConfig, {"w_grad": -1})
    with pytest.raises(ConfigError, match="intensity_target"):
        from_dict(LossConfig, {"intensity_target": "median"})
    with pytest.raises(ConfigError, match="unknown task"):
        LossConfig.for_task("xyz")


def _texture_and_its_blur(size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A sharp random texture and a strongly blurred copy of it."""
    torch.manual_seed(1)
    sharp = torch.rand(1, 1, size, size)
    kernel = torch.ones(1, 1, 9, 9) / 81
    blurred = F.conv2d(F.pad(sharp, (4, 4, 4, 4), mode="replicate"), kernel)
    return sharp, blurred


def test_focus_target_takes_the_sharper_source_where_it_is_sharper():
    sharp, blurred = _texture_and_its_blur()
    # Left half: A sharp, B blurred; right half: the other way round.
    a = torch.cat([sharp[..., :24], blurred[..., 24:]], dim=-1)
    b = torch.cat([blurred[..., :24], sharp[..., 24:]], dim=-1)
    target = focus_target(a, b, window=7)
    inner = (slice(None), slice(None), slice(4, -4))
    torch.testing.assert_close(target[..., :20][inner], sharp[..., :20][inner])
    torch.testing.assert_close(target[..., 28:][inner], sharp[..., 28:][inner])
    cfg = dataclasses.replace(LossConfig.for_task("mff"), intensity_target="focus")
    _, terms = FusionLoss(cfg)(target, a, b)
    assert terms["int"].item() == 0.0


def test_differentiable_vif_matches_the_metric_and_has_gradients():
    from adaray.data import discover_pairs, read_pair
    from adaray.data.color import split_luma
    from adaray.metrics import METRICS

    pair = discover_pairs(SAMPLES, "ivf")[0]
    a_img, b_img = read_pair(pair)
    a, b = (np.rint(split_luma(x)[0] * 255) for x in (a_img, b_img))
    for fused in ((a + b) / 2, np.maximum(a, b), a):
        fused = np.rint(fused)
        expected = METRICS["VIF"](fused, a, b)
        tensors = [torch.from_numpy(x / 255).float()[None, None] for x in (fused, a, b)]
        tensors[0].requires_grad_(True)
        got = vif(*tensors)
        assert got.item() == pytest.approx(expected, abs=1e-4)
        got.sum().backward()
        assert torch.isfinite(tensors[0].grad).all() and tensors[0].grad.abs().sum() > 0


def test_vif_term_is_added_only_when_weighted(pair):
    a, b = pair
    cfg = LossConfig.for_task("ivf")
    plain, terms = FusionLoss(cfg)(a, a, b)
    assert "vif" not in terms
    weighted, terms = FusionLoss(dataclasses.replace(cfg, w_vif=4.0))(a, a, b)
    expected = plain.item() + 4 * (1 - terms["vif"].item() / 2)
    assert weighted.item() == pytest.approx(expected, rel=1e-5)


def test_new_loss_fields_are_validated():
    with pytest.raises(ConfigError, match="focus_window: must be an odd number"):
        from_dict(LossConfig, {"focus_window": 8})
    with pytest.raises(ConfigError, match="w_vif: must be >= 0"):
        from_dict(LossConfig, {"w_vif": -0.5})

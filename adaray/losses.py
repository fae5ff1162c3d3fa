"""Unsupervised fusion losses (MODEL.md "Losses"): intensity, gradient and SSIM terms.

loss = w_int * L_int + w_grad * L_grad + w_ssim * (1 - L_ssim), on the fused luma.
Task defaults come from `adaray.tasks`; a LossConfig field left as None takes the task's value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from adaray.config import ConfigError
from adaray.tasks import get_task

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


@dataclass
class LossConfig:
    """Loss weights and targets; None means "the task's default" (see `resolved`)."""

    w_int: float | None = None
    w_grad: float | None = None
    w_ssim: float | None = None
    intensity_target: Literal["max", "mean"] | None = None
    ssim_weighting: Literal["gradient", "equal"] | None = None

    def validate(self) -> None:
        """Raise ConfigError for a negative weight."""
        for name in ("w_int", "w_grad", "w_ssim"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name}: must be >= 0, got {value}")

    def resolved(self, task: str) -> LossConfig:
        """A copy with every None replaced by the task table's default."""
        spec = get_task(task)
        return replace(
            self,
            **{
                name: getattr(spec, name)
                for name in ("w_int", "w_grad", "w_ssim", "intensity_target", "ssim_weighting")
                if getattr(self, name) is None
            },
        )

    @classmethod
    def for_task(cls, task: str) -> LossConfig:
        """The task's default loss configuration."""
        return cls().resolved(task)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of an (N,1,H,W) map: 3x3 Sobel kernels, replicate padding, same size."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype,
                      device=x.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return grads.abs().sum(dim=1, keepdim=True)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (N,) of (N,1,H,W) maps in [0,1]: 11x11 Gaussian, sigma 1.5, reflect pad."""
    if min(x.shape[-2:]) <= SSIM_WINDOW // 2:
        raise ValueError(f"SSIM needs images larger than {SSIM_WINDOW // 2} px, got {x.shape[-2:]}")
    g = _gaussian_window(x.dtype, x.device)
    pad = SSIM_WINDOW // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    stacked = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1).flatten(0, 1).unsqueeze(1))
    mu_x, mu_y, xx, yy, xy = stacked.unflatten(0, (x.shape[0], 5)).unbind(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return ssim_map.flatten(1).mean(dim=1)


class FusionLoss(nn.Module):
    """The weighted task loss; forward returns (total, {"int", "grad", "ssim"} detached terms)."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        missing = [k for k in ("w_int", "w_grad", "w_ssim", "intensity_target", "ssim_weighting")
                   if getattr(cfg, k) is None]
        if missing:
            raise ConfigError(f"loss.{missing[0]}: unset; use LossConfig.resolved(task)")
        cfg.validate()
        self.config = cfg

    def ssim_weights(self, grad_a: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
        """(N, 2) weights of SSIM(F,A) and SSIM(F,B); each row sums to 1."""
        if self.config.ssim_weighting == "equal":
            return torch.full((grad_a.shape[0], 2), 0.5, dtype=grad_a.dtype, device=grad_a.device)
        strength = torch.stack([grad_a.flatten(1).mean(1), grad_b.flatten(1).mean(1)], dim=1)
        total = strength.sum(dim=1, keepdim=True)
        return torch.where(total > 0, strength / total.clamp_min(1e-12), 0.5)

    def forward(
        self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        target = torch.maximum(a, b) if cfg.intensity_target == "max" else (a + b) / 2
        loss_int = F.l1_loss(fused, target)
        grad_a, grad_b = sobel_magnitude(a), sobel_magnitude(b)
        loss_grad = F.l1_loss(sobel_magnitude(fused), torch.maximum(grad_a, grad_b))
        weights = self.ssim_weights(grad_a, grad_b)
        ssim_fused = (weights[:, 0] * ssim(fused, a) + weights[:, 1] * ssim(fused, b)).mean()
        total = cfg.w_int * loss_int + cfg.w_grad * loss_grad + cfg.w_ssim * (1 - ssim_fused)
        terms = {"int": loss_int.detach(), "grad": loss_grad.detach(),
                 "ssim": ssim_fused.detach()}
        return total, terms

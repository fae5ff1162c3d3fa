"""Unsupervised fusion losses (MODEL.md "Losses"): intensity, gradient and SSIM terms, and the
information-fidelity term that heads composing the sources may train with.

loss = w_int * L_int + w_grad * L_grad + w_ssim * (1 - L_ssim) + w_vif * (1 - VIF / 2),
on the fused luma.
Task defaults come from `adaray.tasks`; a LossConfig field left as None takes the task's value.

- Intensity target: max(A, B), mean(A, B), or "focus": per pixel the source with the larger
  local gradient energy (Sobel magnitude squared, averaged over `focus_window` pixels). A head
  that composes the sources meets the mean target exactly with w = 0.5 everywhere; the focus
  target asks it to take the sharper source, as a classical multi-focus decision map does.
- VIF is VIFF(A, F) + VIFF(B, F) (METRICS.md) made differentiable: how much of each source's
  information the fused image keeps, at four scales. Alone it rewards copying one source
  (VIFF(A, A) = 1); the SSIM term, which rewards resembling both, balances it.
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
LOSS_FIELDS = ("w_int", "w_grad", "w_ssim", "intensity_target", "ssim_weighting", "w_vif",
               "focus_window")
# VIFF (METRICS.md): noise variance and epsilon on the 0..255 scale
VIF_NOISE_VAR, VIF_EPS = 2.0, 1e-10


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and targets; None means "the task's default" (see `resolved`)."""

    w_int: float | None = None
    w_grad: float | None = None
    w_ssim: float | None = None
    intensity_target: Literal["max", "mean", "focus"] | None = None
    ssim_weighting: Literal["gradient", "equal"] | None = None
    w_vif: float | None = None
    focus_window: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a negative weight or an even or small focus window."""
        for name in ("w_int", "w_grad", "w_ssim", "w_vif"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name}: must be >= 0, got {value}")
        if self.focus_window is not None and (self.focus_window < 1 or
                                              self.focus_window % 2 == 0):
            raise ConfigError(f"focus_window: must be an odd number >= 1, got "
                              f"{self.focus_window}")

    def resolved(self, task: str) -> LossConfig:
        """A copy with every None replaced by the task table's default."""
        spec = get_task(task)
        return replace(
            self,
            **{
                name: getattr(spec, name)
                for name in LOSS_FIELDS if getattr(self, name) is None
            },
        )

    @classmethod
    def for_task(cls, task: str) -> LossConfig:
        """The task's default loss configuration."""
        return cls().resolved(task)


def sobel(x: torch.Tensor, padding: str = "replicate") -> torch.Tensor:
    """(Gx, Gy) Sobel responses of an (N,1,H,W) map as (N,2,H,W), same size."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype,
                      device=x.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=padding), kernels)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of an (N,1,H,W) map: 3x3 Sobel kernels, replicate padding, same size."""
    return sobel(x).abs().sum(dim=1, keepdim=True)


def focus_target(a: torch.Tensor, b: torch.Tensor, window: int) -> torch.Tensor:
    """Per pixel the source with the larger local gradient energy (ties: A)."""
    energy = sobel_magnitude(torch.cat([a, b], dim=1).flatten(0, 1).unsqueeze(1)) ** 2
    energy = F.avg_pool2d(F.pad(energy, (window // 2,) * 4, mode="replicate"), window, stride=1)
    energy_a, energy_b = energy.unflatten(0, (a.shape[0], 2)).unbind(1)
    return torch.where(energy_a >= energy_b, a, b)


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


def _vif_gaussian_valid(x: torch.Tensor, size: int, stride: int = 1) -> torch.Tensor:
    """Separable Gaussian (size taps, sigma size / 5) of (N, C, H, W), 'valid', every stride-th."""
    offsets = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * (size / 5) ** 2))
    taps = taps / taps.sum()
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(flat, taps.view(1, 1, 1, -1), stride=(1, stride))
    flat = F.conv2d(flat, taps.view(1, 1, -1, 1), stride=(stride, 1))
    return flat.reshape(n, c, *flat.shape[-2:])


def vif(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image VIF (N,) = VIFF(A, F) + VIFF(B, F) of (N,1,H,W) maps in [0, 1] (scored on the
    0..255 scale, as METRICS.md defines it), differentiable in `fused`. Images need at least
    20 pixels a side (fewer scales are used where the coarse ones have no valid pixels)."""
    images = torch.cat([a, b, fused], dim=1) * 255.0  # (N, 3, H, W)
    num = images.new_zeros(a.shape[0], 2)
    den = images.new_zeros(a.shape[0], 2)
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        if scale > 1:
            images = _vif_gaussian_valid(images, size, stride=2)
        if min(images.shape[-2:]) < size:
            break
        ref, dist = images[:, :2], images[:, 2:]
        stats = _vif_gaussian_valid(torch.cat([ref, dist, ref * ref, dist * dist, ref * dist],
                                              dim=1), size)
        mu_ref, mu_dist = stats[:, 0:2], stats[:, 2:3]
        var_ref = (stats[:, 3:5] - mu_ref**2).clamp_min(0)
        var_dist = (stats[:, 5:6] - mu_dist**2).clamp_min(0)
        cov = stats[:, 6:8] - mu_ref * mu_dist
        gain = cov / (var_ref + VIF_EPS)
        noise = (var_dist - gain * cov).clamp_min(VIF_EPS)
        textured = var_ref >= VIF_EPS
        kept = textured & (var_dist >= VIF_EPS) & (gain >= 0)
        information = torch.where(kept, gain**2 * var_ref / (noise + VIF_NOISE_VAR), 0.0)
        num = num + torch.log1p(information).flatten(2).sum(2)
        reference = torch.where(textured, var_ref, 0.0) / VIF_NOISE_VAR
        den = den + torch.log1p(reference).flatten(2).sum(2)
    return torch.where(den > 0, num / den.clamp_min(VIF_EPS), 1.0).sum(1)


class FusionLoss(nn.Module):
    """The weighted task loss; forward returns (total, {"int", "grad", "ssim"[, "vif"]}
    detached terms)."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        missing = [k for k in LOSS_FIELDS if getattr(cfg, k) is None]
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
        if cfg.intensity_target == "max":
            target = torch.maximum(a, b)
        elif cfg.intensity_target == "mean":
            target = (a + b) / 2
        else:
            target = focus_target(a, b, cfg.focus_window)
        loss_int = F.l1_loss(fused, target)
        grad_a, grad_b = sobel_magnitude(a), sobel_magnitude(b)
        loss_grad = F.l1_loss(sobel_magnitude(fused), torch.maximum(grad_a, grad_b))
        weights = self.ssim_weights(grad_a, grad_b)
        ssim_fused = (weights[:, 0] * ssim(fused, a) + weights[:, 1] * ssim(fused, b)).mean()
        total = cfg.w_int * loss_int + cfg.w_grad * loss_grad + cfg.w_ssim * (1 - ssim_fused)
        terms = {"int": loss_int.detach(), "grad": loss_grad.detach(),
                 "ssim": ssim_fused.detach()}
        if cfg.w_vif > 0:
            fidelity = vif(fused, a, b).mean()
            total = total + cfg.w_vif * (1 - fidelity / 2)
            terms["vif"] = fidelity.detach()
        return total, terms

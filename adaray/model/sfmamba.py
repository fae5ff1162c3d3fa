"""The SF-Mamba block: a Mamba-2 mixer adapted to 2-D with spatial and frequency branches.

Token grids are kept channels-last, (N, h, w, d), so LayerNorm and the projections act on the
last dimension; the depthwise conv and the frequency filter see the grid they need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adaray.model.config import ModelConfig
from adaray.model.ssd import ssd_scan


def global_filter_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The global frequency filter by autograd: irfft(w * rfft(x)) along L (orthonormal).

    x (N, L, ch) real, weight (ch, 2) = (real, imag) of one complex scalar per channel.
    The reference `global_filter` is tested against.
    """
    spectrum = torch.fft.rfft(x.transpose(1, 2), dim=-1, norm="ortho")
    spectrum = spectrum * torch.view_as_complex(weight.contiguous())[:, None]
    return torch.fft.irfft(spectrum, n=x.shape[1], dim=-1, norm="ortho").transpose(1, 2)


class _GlobalFilter(torch.autograd.Function):
    """irfft(w * rfft(x)) with a hand-written backward (MODEL.md, CPU notes).

    The filter is a real circular convolution whose adjoint is the same filter with conj(w),
    so grad_x = irfft(conj(w) * rfft(g)): one r2c and one c2r transform, where autograd's
    backward of rfft runs a full-length complex FFT on a zero-filled buffer. For the weight,
    <g, irfft(Z)> = sum_k c_k Re(Z_k conj(G_k)) with c_k = 1 at DC and Nyquist, 2 elsewhere,
    so with P = sum_k c_k X_k conj(G_k): dL/d(real) = Re P, dL/d(imag) = -Im P.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        w = torch.view_as_complex(weight.contiguous())[:, None]
        spectrum = torch.fft.rfft(x.transpose(1, 2), dim=-1, norm="ortho")  # (N, ch, L//2+1)
        ctx.save_for_backward(spectrum, weight)
        ctx.length = length
        return torch.fft.irfft(spectrum * w, n=length, dim=-1, norm="ortho").transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        spectrum, weight = ctx.saved_tensors
        length = ctx.length
        w = torch.view_as_complex(weight.contiguous())[:, None]
        grad_spectrum = torch.fft.rfft(grad.transpose(1, 2), dim=-1, norm="ortho")
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.fft.irfft(grad_spectrum * w.conj(), n=length, dim=-1,
                                     norm="ortho").transpose(1, 2)
        if ctx.needs_input_grad[1]:
            products = spectrum * grad_spectrum.conj()  # (N, ch, L//2+1)
            total = 2 * products.sum(dim=(0, 2)) - products[..., 0].sum(dim=0)
            if length % 2 == 0:  # the Nyquist bin is counted once
                total = total - products[..., -1].sum(dim=0)
            grad_weight = torch.stack([total.real, -total.imag], dim=-1)
        return grad_x, grad_weight


def global_filter(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`global_filter_ref` with the hand-written backward of `_GlobalFilter` (same values)."""
    return _GlobalFilter.apply(x, weight)


class GlobalFrequencyFilter(nn.Module):
    """Scale the orthonormal rfft of the raster sequence by a learnable complex number per channel.

    The weight does not depend on the sequence length, so one model serves any image size.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 2) * 0.02)  # (real, imag)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, L, ch) -> (N, L, ch), filtered along L (computed in fp32)."""
        return global_filter(x.float(), self.weight.float()).to(x.dtype)


class SFMambaMixer(nn.Module):
    """Mamba-2 mixer; its xBC branch sums a depthwise 3x3 conv + SiLU and a global FFT filter."""

    def __init__(self, width: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.d_inner = cfg.expand * width
        self.headdim = cfg.headdim
        self.nheads = self.d_inner // cfg.headdim
        self.ngroups = cfg.ngroups
        self.d_state = cfg.d_state
        self.chunk_size = cfg.chunk_size
        self.xbc_width = self.d_inner + 2 * cfg.ngroups * cfg.d_state
        self.in_proj = nn.Linear(width, 2 * self.d_inner + 2 * cfg.ngroups * cfg.d_state
                                 + self.nheads, bias=False)
        self.spatial_conv = nn.Conv2d(
            self.xbc_width, self.xbc_width, 3, padding=1, groups=self.xbc_width
        )
        self.frequency_filter = GlobalFrequencyFilter(self.xbc_width)

        dt = torch.exp(torch.empty(self.nheads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, width) -> (N, h, w, width)."""
        n, h, w, _ = x.shape
        z, xbc, dt = torch.split(
            self.in_proj(x), [self.d_inner, self.xbc_width, self.nheads], dim=-1
        )
        spatial = F.silu(self.spatial_conv(xbc.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        frequency = self.frequency_filter(xbc.reshape(n, h * w, -1)).reshape(n, h, w, -1)
        xbc = (spatial + frequency).reshape(n, h * w, -1)
        group_width = self.ngroups * self.d_state
        xs, B, C = torch.split(xbc, [self.d_inner, group_width, group_width], dim=-1)
        dt = F.softplus(dt.reshape(n, h * w, self.nheads) + self.dt_bias)
        y = ssd_scan(
            xs.reshape(n, h * w, self.nheads, self.headdim),
            dt,
            -torch.exp(self.A_log.float()),
            B.reshape(n, h * w, self.ngroups, self.d_state),
            C.reshape(n, h * w, self.ngroups, self.d_state),
            D=self.D,
            chunk_size=self.chunk_size,
        )
        y = self.out_norm(y.reshape(n, h, w, self.d_inner)) * F.silu(z)
        return self.out_proj(y)


class GatedMLP(nn.Module):
    """Linear(d -> 2 * hidden), split into u, v; Linear(SiLU(u) * v -> d); dropout."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc_in = nn.Linear(width, 2 * hidden)
        self.fc_out = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.fc_in(x).chunk(2, dim=-1)
        return self.dropout(self.fc_out(F.silu(u) * v))


class SFMambaBlock(nn.Module):
    """Pre-norm residual block: x + SFMamba(LN(x)), then x + GatedMLP(LN(x))."""

    def __init__(self, width: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.mixer_norm = nn.LayerNorm(width)
        self.mixer = SFMambaMixer(width, cfg)
        self.mixer_dropout = nn.Dropout(cfg.dropout)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = GatedMLP(width, cfg.mlp_ratio * width, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, h, w, width) -> same shape."""
        x = x + self.mixer_dropout(self.mixer(self.mixer_norm(x)))
        return x + self.mlp(self.mlp_norm(x))


class SFMambaStage(nn.Sequential):
    """`depth` SF-Mamba blocks applied to an (N, C, H, W) map (identity when depth is 0)."""

    def __init__(self, width: int, depth: int, cfg: ModelConfig) -> None:
        super().__init__(*(SFMambaBlock(width, cfg) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self) == 0:
            return x
        tokens = x.permute(0, 2, 3, 1)
        for block in self:
            tokens = block(tokens)
        return tokens.permute(0, 3, 1, 2)

"""AdaSFFuse: adaptive spatial-frequency fusion of two single-channel images (MODEL.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaray.model.config import ModelConfig
from adaray.model.sfmamba import SFMambaStage
from adaray.model.wavelet import AdaIWAT, AdaWAT


class AdaSFFuse(nn.Module):
    """forward(a, b) -> fused: (N,1,H,W) inputs in [0,1], any H, W >= 2; output the same size.

    The output is unbounded in training (the losses pull it into range) and clamped to [0, 1]
    in eval mode.
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.config = cfg
        c = cfg.channels
        self.embed = nn.Conv2d(1, c, 3, padding=1)
        self.wat = AdaWAT()
        self.enhance_high = nn.Conv2d(3 * c, 3 * c, 3, padding=1, groups=c)
        self.enhance_low = nn.Conv2d(c, c, 3, padding=3, dilation=3, groups=c)
        self.high_blocks = SFMambaStage(3 * c, cfg.n_hi, cfg)
        self.low_blocks = SFMambaStage(c, cfg.n_lo, cfg)
        self.iwat = AdaIWAT()
        self.fuse_blocks = SFMambaStage(c, cfg.n_fuse, cfg)
        self.unembed = nn.Sequential(
            nn.Conv2d(c, c // 2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c // 2, c // 4, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c // 4, 1, 3, padding=1),
        )

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed one source and split it into enhanced low and high bands."""
        features = F.leaky_relu(self.embed(x), 0.2)
        low, high = self.wat(features)
        return F.gelu(self.enhance_low(low)), F.gelu(self.enhance_high(high))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"sources differ in shape: a {tuple(a.shape)} vs b {tuple(b.shape)}")
        if a.dim() != 4 or a.shape[1] != 1 or min(a.shape[-2:]) < 2:
            raise ValueError(f"expected (N, 1, H, W) with H, W >= 2, got {tuple(a.shape)}")
        size = (a.shape[-2], a.shape[-1])
        low_a, high_a = self.decompose(a)
        low_b, high_b = self.decompose(b)
        high = self.high_blocks(high_a + high_b)
        low = self.low_blocks(low_a + low_b)
        fused = self.fuse_blocks(self.iwat(low, high, size))
        out = self.unembed(fused)
        return out if self.training else out.clamp(0.0, 1.0)

"""AdaSFFuse: adaptive spatial-frequency fusion of two single-channel images (MODEL.md).

The body (embedding, AdaWAT, SF-Mamba blocks per band, AdaIWAT, full-resolution blocks) is the
paper's. The head is a config choice (`ModelConfig.head`):

- `pixels` (the paper's): convs C -> C/2 -> C/4 -> 1 predict the fused luma.
- `weights`: the same convs score each source per pixel from the body's features and that
  source's own embedding; fused = w a + (1 - w) b with w = sigmoid(score_a - score_b), a
  softmax over the two sources. The body adds the two sources' features, so it cannot tell
  them apart; scoring each source with its own embedding, by one shared head, is what lets w
  prefer one source over the other (and swapping the sources swaps w and 1 - w).
- `pyramid`: the same maps blend the sources' Laplacian pyramids through their Gaussian
  pyramids (`adaray.model.pyramid`), one map for all levels or one per level. With
  `detail: larger` the band-pass levels follow the classical rule (the larger coefficient) and
  the map weights the base only: the network learns how to blend the coarse content.

A composing head starts at w = 0.5 everywhere (the average; with `detail: larger` the
classical Laplacian pyramid fusion) and can express any per-pixel choice of source, a
classical decision map included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaray.model.config import ModelConfig
from adaray.model.pyramid import blend_pyramids
from adaray.model.sfmamba import SFMambaStage
from adaray.model.wavelet import AdaIWAT, AdaWAT


class AdaSFFuse(nn.Module):
    """forward(a, b) -> fused: (N,1,H,W) inputs in [0,1], any H, W >= 2; output the same size.

    The pixel head's output is unbounded in training (the losses pull it into range); every
    head's output is clamped to [0, 1] in eval mode. `forward_with_maps` also returns the
    composing heads' weight maps.
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
        composing = cfg.head != "pixels"
        maps = cfg.levels + 1 if cfg.per_level_maps else 1
        self.unembed = nn.Sequential(
            nn.Conv2d(2 * c if composing else c, c // 2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c // 2, c // 4, 3, padding=1),
            nn.LeakyReLU(0.2),
            # A bias would cancel in score_a - score_b.
            nn.Conv2d(c // 4, maps if composing else 1, 3, padding=1, bias=not composing),
        )
        if composing:  # equal scores, w = 0.5: start at the average of the sources
            nn.init.zeros_(self.unembed[-1].weight)

    def embed_source(self, x: torch.Tensor) -> torch.Tensor:
        """The shared embedding of one source, (N, C, H, W)."""
        return F.leaky_relu(self.embed(x), 0.2)

    def decompose(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split one source's embedding into enhanced low and high bands."""
        low, high = self.wat(features)
        return F.gelu(self.enhance_low(low)), F.gelu(self.enhance_high(high))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.forward_with_maps(a, b)[0]

    def forward_with_maps(self, a: torch.Tensor, b: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fused, maps): maps are the weights of source A in [0, 1], (N, M, H, W) with M = 1
        or levels + 1 (per-level pyramid maps, finest first); None for the pixel head."""
        if a.shape != b.shape:
            raise ValueError(f"sources differ in shape: a {tuple(a.shape)} vs b {tuple(b.shape)}")
        if a.dim() != 4 or a.shape[1] != 1 or min(a.shape[-2:]) < 2:
            raise ValueError(f"expected (N, 1, H, W) with H, W >= 2, got {tuple(a.shape)}")
        size = (a.shape[-2], a.shape[-1])
        embedded_a, embedded_b = self.embed_source(a), self.embed_source(b)
        low_a, high_a = self.decompose(embedded_a)
        low_b, high_b = self.decompose(embedded_b)
        high = self.high_blocks(high_a + high_b)
        low = self.low_blocks(low_a + low_b)
        fused = self.fuse_blocks(self.iwat(low, high, size))
        if self.config.head == "pixels":
            out = self.unembed(fused)
            return (out if self.training else out.clamp(0.0, 1.0)), None
        scores = self.unembed(torch.cat([fused.repeat(2, 1, 1, 1),
                                         torch.cat([embedded_a, embedded_b])], dim=1))
        score_a, score_b = scores.chunk(2)
        maps = torch.sigmoid(score_a - score_b).to(a.dtype)  # bf16 autocast: blend in fp32
        if self.config.head == "weights":
            out = maps * a + (1 - maps) * b
        else:
            out = blend_pyramids(a, b, maps, self.config.levels, self.config.detail)
        return (out if self.training else out.clamp(0.0, 1.0)), maps

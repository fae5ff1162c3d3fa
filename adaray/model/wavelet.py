"""AdaWAT / AdaIWAT: learnable 2-tap wavelet analysis and synthesis (MODEL.md steps 2 and 5).

Both start as the orthonormal Haar pair. With PyTorch's cross-correlation `conv2d` (stride 2)
for analysis and `conv_transpose2d` (stride 2) for synthesis, the synthesis kernels that invert
Haar analysis are the analysis kernels themselves, so at initialisation
AdaIWAT(AdaWAT(x)) == x exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HAAR_LO = (1 / math.sqrt(2), 1 / math.sqrt(2))
HAAR_HI = (1 / math.sqrt(2), -1 / math.sqrt(2))


def band_kernels(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The 2x2 kernels LL, LH, HL, HH as outer products; LH is hi along rows, lo along columns."""
    return torch.stack(
        [torch.outer(lo, lo), torch.outer(hi, lo), torch.outer(lo, hi), torch.outer(hi, hi)]
    )


class AdaWAT(nn.Module):
    """Adaptive wavelet analysis: (N,C,H,W) -> LL (N,C,h,w) and details (N,3C,h,w), h = ceil(H/2).

    Details are channel-major: for each input channel its LH, HL, HH are adjacent.
    Odd sizes are replicate-padded at the bottom/right.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lo = nn.Parameter(torch.tensor(HAAR_LO))
        self.hi = nn.Parameter(torch.tensor(HAAR_HI))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, height, width = x.shape[1:]
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        weight = band_kernels(self.lo, self.hi).to(x.dtype).unsqueeze(1).repeat(c, 1, 1, 1)
        bands = F.conv2d(x, weight, stride=2, groups=c)  # (N, 4C, h, w), channel-major
        bands = bands.unflatten(1, (c, 4))
        low = bands[:, :, 0]
        high = bands[:, :, 1:].flatten(1, 2)
        return low, high


class AdaIWAT(nn.Module):
    """Adaptive wavelet synthesis: LL (N,C,h,w) + details (N,3C,h,w) -> (N,C,H,W)."""

    def __init__(self) -> None:
        super().__init__()
        self.lo = nn.Parameter(torch.tensor(HAAR_LO))
        self.hi = nn.Parameter(torch.tensor(HAAR_HI))

    def forward(self, low: torch.Tensor, high: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        c = low.shape[1]
        bands = torch.cat([low.unsqueeze(2), high.unflatten(1, (c, 3))], dim=2).flatten(1, 2)
        weight = band_kernels(self.lo, self.hi).to(low.dtype).unsqueeze(1).repeat(c, 1, 1, 1)
        out = F.conv_transpose2d(bands, weight, stride=2, groups=c)
        return out[:, :, : size[0], : size[1]]

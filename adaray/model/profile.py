"""Size and speed figures of a model: parameters, FLOPs and latency (used by `adaray info`)."""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from adaray.model.config import ModelConfig
from adaray.model.network import AdaSFFuse


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(cfg: ModelConfig, height: int, width: int) -> int:
    """Forward FLOPs (2 per multiply-add; matmul, einsum and conv ops) for one (1,1,H,W) pair.

    Runs on the meta device, so it costs no memory or compute at any size.
    """
    with torch.device("meta"):
        model = AdaSFFuse(cfg).eval()
        a = torch.empty(1, 1, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(a, a)
    return counter.get_total_flops()


def measure_latency(
    model: torch.nn.Module, height: int, width: int, repeats: int = 3, warmup: int = 1
) -> float:
    """Median seconds of one inference forward pass on a (1,1,H,W) pair on the model's device."""
    device = next(model.parameters()).device
    a = torch.rand(1, 1, height, width, device=device)
    b = torch.rand(1, 1, height, width, device=device)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]

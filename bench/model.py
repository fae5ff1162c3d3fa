"""Model figures: parameters, FLOPs, inference latency and training-step throughput on CPU.

    python bench/model.py [--config MODEL.yaml] [--sizes 256 512] [--batch 4 --patch 128]
                          [--system-malloc]

Prints figures only (no assertions). `--system-malloc` skips `adaray.runtime.configure_allocator`
so the allocator's effect can be compared in two runs on the same machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from adaray.config import load_yaml
from adaray.losses import FusionLoss, LossConfig
from adaray.model import AdaSFFuse, ModelConfig
from adaray.model.profile import count_flops, count_parameters, measure_latency
from adaray.runtime import configure_allocator


def train_step_seconds(model: AdaSFFuse, batch: int, patch: int, steps: int) -> float:
    """Median seconds of one AdamW step (forward, IVF loss, backward, update) on random patches."""
    loss_fn = FusionLoss(LossConfig.for_task("ivf"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for i in range(steps + 1):
        a, b = torch.rand(batch, 1, patch, patch), torch.rand(batch, 1, patch, patch)
        start = time.perf_counter()
        loss, _ = loss_fn(model(a, b), a, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="ModelConfig YAML (default: the paper's config)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes (median)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc malloc at its defaults")
    args = parser.parse_args()

    allocator = "system malloc" if args.system_malloc else (
        "malloc without mmap/trim" if configure_allocator() else "system malloc (not glibc)")
    cfg = load_yaml(ModelConfig, args.config) if args.config else ModelConfig()
    torch.manual_seed(0)
    model = AdaSFFuse(cfg)
    print(f"config: {args.config or 'default ModelConfig'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, {allocator}")
    print(f"parameters: {count_parameters(model):,}")
    for size in args.sizes:
        print(f"FLOPs at {size}x{size}: {count_flops(cfg, size, size) / 1e9:,.1f} GFLOP")
    for size in args.sizes:
        latency = measure_latency(model, size, size, repeats=args.repeats)
        print(f"inference latency at {size}x{size}: {latency:.2f} s")
    step = train_step_seconds(model, args.batch, args.patch, args.steps)
    print(f"training step, {args.batch} x {args.patch}x{args.patch}: {step:.2f} s "
          f"= {args.batch / step:.2f} samples/s")


if __name__ == "__main__":
    main()

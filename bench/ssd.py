"""Speed of the chunked SSD scan against the sequential reference on CPU.

    python bench/ssd.py [--threads N] [--lengths 4096 16384] [--chunks 64 32]

Shapes are one SF-Mamba head set of the default model: batch 1, 6 heads of width 64, d_state 64,
one group, fp32, inputs at the network's init magnitudes. For each length it prints forward and
forward+backward times, the speed-up of each chunk size over the sequential loop, and the largest
relative error (max|diff| / max|ref|) of the output and of the gradients w.r.t. x, dt, A, B, C, D
as a sanity check. The sequential reference is slow at long lengths, so it runs only --ref-repeats
times (default 2, best kept); chunked timings are the best of --repeats runs after a warm-up.
Timings on a shared machine are noisy: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import time
from collections.abc import Callable

import torch

from adaray.model.ssd import ssd_scan_chunked, ssd_scan_ref

BATCH, NHEADS, HEADDIM, NGROUPS, DSTATE = 1, 6, 64, 1, 64
INPUT_NAMES = ("x", "dt", "A", "B", "C", "D")


def make_inputs(seqlen: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 inputs: dt log-uniform in [1e-3, 1e-1], A in -[1, 16], x, B, C ~ N(0, 1), D = 1."""
    gen = torch.Generator().manual_seed(seed)
    log_dt = math.log(1e-3) + math.log(100) * torch.rand(BATCH, seqlen, NHEADS, generator=gen)
    inputs = {
        "x": torch.randn(BATCH, seqlen, NHEADS, HEADDIM, generator=gen),
        "dt": log_dt.exp(),
        "A": -(1 + 15 * torch.rand(NHEADS, generator=gen)),
        "B": torch.randn(BATCH, seqlen, NGROUPS, DSTATE, generator=gen),
        "C": torch.randn(BATCH, seqlen, NGROUPS, DSTATE, generator=gen),
        "D": torch.ones(NHEADS),
    }
    return {name: tensor.requires_grad_(True) for name, tensor in inputs.items()}


def time_scan(
    scan: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], repeats: int, warmup: bool
) -> tuple[float, float, list[torch.Tensor]]:
    """Best forward time, best forward+backward time (seconds), and [y, grads...] of one run."""
    args = [inputs[name] for name in INPUT_NAMES]
    upstream = torch.randn(
        inputs["x"].shape, generator=torch.Generator().manual_seed(1), dtype=inputs["x"].dtype
    )
    if warmup:
        scan(*args).backward(upstream)
    forward_times, backward_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            scan(*args)
        forward_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        y = scan(*args)
        grads = torch.autograd.grad(y, args, upstream)
        backward_times.append(time.perf_counter() - start)
    return min(forward_times), min(backward_times), [y.detach(), *grads]


def max_relative_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """Largest max|got - ref| / max|ref| over the output and the gradients."""
    return max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--repeats", type=int, default=5, help="chunked runs per setting")
    parser.add_argument("--ref-repeats", type=int, default=2, help="sequential runs per length")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"SSD scan, CPU fp32: batch {BATCH}, heads {NHEADS}, headdim {HEADDIM}, "
        f"d_state {DSTATE}, groups {NGROUPS}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    header = (
        f"{'length':>7} {'scan':>12} {'fwd ms':>10} {'fwd+bwd ms':>11} "
        f"{'fwd x':>7} {'fwd+bwd x':>10} {'max rel err':>12}"
    )
    print(header)
    print("-" * len(header))
    for seqlen in args.lengths:
        inputs = make_inputs(seqlen)
        ref_forward, ref_backward, ref_results = time_scan(
            ssd_scan_ref, inputs, args.ref_repeats, warmup=False
        )
        print(
            f"{seqlen:>7} {'sequential':>12} {ref_forward * 1e3:>10.1f} "
            f"{ref_backward * 1e3:>11.1f} {'1.0':>7} {'1.0':>10} {'-':>12}"
        )
        for chunk_size in args.chunks:
            chunked = functools.partial(ssd_scan_chunked, chunk_size=chunk_size)
            forward, backward, results = time_scan(chunked, inputs, args.repeats, warmup=True)
            print(
                f"{seqlen:>7} {f'chunked {chunk_size}':>12} {forward * 1e3:>10.1f} "
                f"{backward * 1e3:>11.1f} {ref_forward / forward:>7.1f} "
                f"{ref_backward / backward:>10.1f} "
                f"{max_relative_error(results, ref_results):>12.1e}"
            )


if __name__ == "__main__":
    main()

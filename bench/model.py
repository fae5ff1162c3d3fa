"""Model figures per shipped config: parameters, FLOPs, inference latency and training-step
throughput on CPU, before and after issue F's speed work, in one run.

    python bench/model.py [--configs YAML ...] [--sizes 256 512] [--batch 4 --patch 128]
                          [--steps 3] [--repeats 3]

Configs default to every TrainConfig under configs/ and configs/paper/; configs with the same
model section share a row. Each (model, variant) is measured in a fresh process, because the
allocator reads its settings when a process starts:

- before: autograd's backward for the global frequency filter (`global_filter_ref`) and no
  allocator variables in the environment (as Ray workers ran before issue F);
- after: the hand-written filter backward (`global_filter`) and `adaray.runtime.ALLOCATOR_ENV`,
  which `adaray.runtime.init_ray` gives every Ray worker.

Both call `configure_allocator()` (as the training loop does) and run in a helper thread, as
Ray Train runs its training loop.
Prints figures only (no assertions); compare the ratios of one run (a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from adaray.config import from_dict, read_yaml
from adaray.losses import FusionLoss
from adaray.model import AdaSFFuse, ModelConfig, sfmamba
from adaray.model.profile import count_flops, count_parameters, measure_latency
from adaray.runtime import ALLOCATOR_ENV, configure_allocator
from adaray.train import load_train_config

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> (allocator environment, global frequency filter)
    "before": ({}, sfmamba.global_filter_ref),
    "after": (ALLOCATOR_ENV, sfmamba.global_filter),
}


def train_step_seconds(model: AdaSFFuse, loss_fn: FusionLoss, batch: int, patch: int,
                       steps: int) -> float:
    """Median seconds of one AdamW step (forward, task loss, backward, update), random patches."""
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


def measure(config: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """One variant's latencies and training step for `config`, measured in a helper thread."""
    configure_allocator()
    sfmamba.global_filter = VARIANTS[variant][1]
    cfg = load_train_config(config)
    figures: dict[str, Any] = {}

    def run() -> None:
        torch.manual_seed(0)
        model = AdaSFFuse(cfg.model)
        for size in args.sizes:
            figures[f"latency_{size}"] = measure_latency(model, size, size, repeats=args.repeats)
        figures["step"] = train_step_seconds(model, FusionLoss(cfg.loss.resolved(cfg.task)),
                                             args.batch, args.patch, args.steps)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return figures


def shipped_models(paths: list[Path]) -> list[tuple[ModelConfig, list[Path]]]:
    """The distinct model sections of the given TrainConfig files, each with its files."""
    models: dict[str, tuple[ModelConfig, list[Path]]] = {}
    for path in paths:
        cfg = from_dict(ModelConfig, (read_yaml(path) or {}).get("model") or {})
        models.setdefault(json.dumps(vars(cfg), sort_keys=True), (cfg, []))[1].append(path)
    return list(models.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", help="TrainConfig YAMLs (default: shipped)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes (median)")
    parser.add_argument("--measure", metavar="YAML", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child process: print one JSON line
        print(json.dumps(measure(args.measure, args.variant, args)))
        return

    paths = [Path(p).resolve() for p in args.configs] if args.configs else sorted(
        [*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "paper").glob("*.yaml")])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; training step: {args.batch} x {args.patch}x{args.patch}, "
          "AdamW, the config's task loss; before/after as in this script's docstring\n")
    sizes = args.sizes
    header = ["configs", "params", *[f"GFLOP {s}" for s in sizes],
              *[f"latency {s} s before / after" for s in sizes],
              "step s before / after", "samples/s before / after", "step speed-up"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    child = [str(Path(__file__).resolve()), "--sizes", *map(str, sizes), "--batch",
             str(args.batch), "--patch", str(args.patch), "--steps", str(args.steps),
             "--repeats", str(args.repeats)]
    for cfg, files in shipped_models(paths):
        figures = {}
        for variant, (env, _) in VARIANTS.items():
            clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            out = subprocess.run([sys.executable, *child, "--measure", str(files[0]),
                                  "--variant", variant], env={**clean, **env}, check=True,
                                 capture_output=True, text=True).stdout
            figures[variant] = json.loads(out.strip().splitlines()[-1])
        before, after = figures["before"], figures["after"]
        names = [f.relative_to(REPO).as_posix() if f.is_relative_to(REPO) else f.name
                 for f in files]
        row = [", ".join(names), f"{count_parameters(AdaSFFuse(cfg)):,}",
               *[f"{count_flops(cfg, s, s) / 1e9:,.1f}" for s in sizes],
               *[f"{before[f'latency_{s}']:.2f} / {after[f'latency_{s}']:.2f}" for s in sizes],
               f"{before['step']:.2f} / {after['step']:.2f}",
               f"{args.batch / before['step']:.2f} / {args.batch / after['step']:.2f}",
               f"{before['step'] / after['step']:.2f}x"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

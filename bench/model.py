"""Model figures per shipped config and output head: parameters, FLOPs, inference latency and
training-step throughput on CPU, in one run.

    python bench/model.py [--configs YAML ...]
                          [--heads pixels weights pyramid pyramid-levels pyramid-larger]
                          [--sizes 256 512] [--batch 8 --patch 64] [--steps 5] [--repeats 3]

Configs default to every TrainConfig under configs/ and configs/paper/; configs with the same
body (the model section without its head) share a group of rows, one row per head:

- pixels: the paper's head, convs that predict the fused luma;
- weights: per-pixel weights of the sources (fused = w a + (1 - w) b);
- pyramid: the weights blend the sources' Laplacian pyramids (`levels` of the config, else 4);
- pyramid-levels: the pyramid head with one map per level;
- pyramid-larger: the pyramid head with band-pass detail by the larger coefficient, the map
  weighting the base (`detail: larger`).

The last column is the step's cost against the pixel head's (issue H: a head may cost at most
10 % of the step). Each row is measured in a fresh process with `ALLOCATOR_ENV` in its
environment and `configure_allocator()` called, in a helper thread, as Ray Train runs its loop;
the training step is AdamW on the config's task loss. Prints figures only (no assertions);
compare the ratios of one run (a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from adaray import shipped_path
from adaray.config import from_dict, read_yaml, to_dict
from adaray.losses import FusionLoss
from adaray.model import AdaSFFuse, ModelConfig
from adaray.model.profile import count_flops, count_parameters, measure_latency
from adaray.runtime import ALLOCATOR_ENV, configure_allocator
from adaray.train import TrainConfig, build_optimizer, load_train_config, optimizer_step

CONFIGS = shipped_path("configs")
HEADS = {  # row name -> values of ModelConfig's head fields (adaray.model.HEAD_FIELDS)
    "pixels": {"head": "pixels", "per_level_maps": False, "detail": "map"},
    "weights": {"head": "weights", "per_level_maps": False, "detail": "map"},
    "pyramid": {"head": "pyramid", "per_level_maps": False, "detail": "map"},
    "pyramid-levels": {"head": "pyramid", "per_level_maps": True, "detail": "map"},
    "pyramid-larger": {"head": "pyramid", "per_level_maps": False, "detail": "larger"},
}


def with_head(cfg: ModelConfig, head: str) -> ModelConfig:
    """`cfg` with the output head `head` (a key of HEADS)."""
    return dataclasses.replace(cfg, **HEADS[head])


def train_step_seconds(model: AdaSFFuse, cfg: TrainConfig, batch: int, patch: int,
                       steps: int) -> float:
    """Median seconds of one training step (forward, task loss, backward, clipping, AdamW
    update: `adaray.train.optimizer_step`) on random patches."""
    optimizer, scheduler = build_optimizer(model, cfg)
    loss_fn = FusionLoss(cfg.loss.resolved(cfg.task))
    model.train()
    times = []
    for i in range(steps + 1):
        a, b = torch.rand(batch, 1, patch, patch), torch.rand(batch, 1, patch, patch)
        start = time.perf_counter()
        loss, _ = loss_fn(model(a, b), a, b)
        optimizer_step(loss, model, optimizer, scheduler, cfg.optim.grad_clip)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(config: str, head: str, args: argparse.Namespace) -> dict[str, Any]:
    """Latencies and the training step of `config`'s model with `head`, in a helper thread."""
    configure_allocator()
    cfg = load_train_config(config)
    model_cfg = with_head(cfg.model, head)
    figures: dict[str, Any] = {}

    def run() -> None:
        torch.manual_seed(0)
        model = AdaSFFuse(model_cfg)
        for size in args.sizes:
            figures[f"latency_{size}"] = measure_latency(model, size, size, repeats=args.repeats)
        figures["step"] = train_step_seconds(model, cfg, args.batch, args.patch, args.steps)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return figures


def shipped_bodies(paths: list[Path]) -> list[tuple[ModelConfig, list[Path]]]:
    """The distinct model bodies (head fields ignored) of the given TrainConfig files."""
    bodies: dict[str, tuple[ModelConfig, list[Path]]] = {}
    for path in paths:
        cfg = with_head(from_dict(ModelConfig, (read_yaml(path) or {}).get("model") or {}),
                        "pixels")
        bodies.setdefault(json.dumps(to_dict(cfg), sort_keys=True), (cfg, []))[1].append(path)
    return list(bodies.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", help="TrainConfig YAMLs (default: shipped)")
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes (median)")
    parser.add_argument("--measure", metavar="YAML", help=argparse.SUPPRESS)
    parser.add_argument("--head", choices=list(HEADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child process: print one JSON line
        print(json.dumps(measure(args.measure, args.head, args)))
        return

    paths = [Path(p).resolve() for p in args.configs] if args.configs else sorted(
        [*CONFIGS.glob("*.yaml"), *(CONFIGS / "paper").glob("*.yaml")])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; training step: {args.batch} x {args.patch}x{args.patch}, "
          "AdamW, the config's task loss\n")
    sizes = args.sizes
    header = ["configs", "head", "params", *[f"GFLOP {s}" for s in sizes],
              *[f"latency {s} s" for s in sizes], "step s", "samples/s", "step vs pixels"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    child = [str(Path(__file__).resolve()), "--sizes", *map(str, sizes), "--batch",
             str(args.batch), "--patch", str(args.patch), "--steps", str(args.steps),
             "--repeats", str(args.repeats)]
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
                   **ALLOCATOR_ENV}
    for body, files in shipped_bodies(paths):
        names = ", ".join(f.relative_to(CONFIGS.parent).as_posix()
                          if f.is_relative_to(CONFIGS.parent) else f.name
                          for f in files)
        pixels_step = None
        for head in args.heads:
            out = subprocess.run([sys.executable, *child, "--measure", str(files[0]),
                                  "--head", head], env=environment, check=True,
                                 capture_output=True, text=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            cfg = with_head(body, head)
            pixels_step = figures["step"] if head == "pixels" else pixels_step
            versus = "-" if pixels_step is None else f"{figures['step'] / pixels_step - 1:+.1%}"
            row = [names, head, f"{count_parameters(AdaSFFuse(cfg)):,}",
                   *[f"{count_flops(cfg, s, s) / 1e9:,.1f}" for s in sizes],
                   *[f"{figures[f'latency_{s}']:.2f}" for s in sizes],
                   f"{figures['step']:.3f}", f"{args.batch / figures['step']:.2f}", versus]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

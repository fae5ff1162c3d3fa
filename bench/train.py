"""Training throughput: a bare PyTorch loop vs the same loop on Ray Train (1 and 2 workers).

    python bench/train.py [--config configs/tiny.yaml] [--task ivf] [--data samples]
                          [--steps 40] [--workers 1 2] [--poll-intervals default 0.2]
                          [--set KEY=VALUE ...] [--verbose]

The bare loop runs the training setup and step of `adaray.train.train_loop_per_worker`
(`build_components` and `train_step`: same model, loss, optimizer, schedule and thread count)
without Ray, validation or tracking, on a DataLoader (`loader_data`); the Ray Train runs use
`adaray.train.build_trainer` (its data streamed by Ray Data) with one validation and checkpoint
at the end.

Per-step rates exclude fixed start-up costs: the bare loop drops its first `--warmup` steps;
for Ray Train they come from the reports the loop makes every `log_every` steps (read back from
the run's MLflow metrics: report times and the loop's `samples_per_s`), leaving out the first
report window, which holds the first step, and the final report, which validates. Those windows
include the loop's own per-report costs (MLflow logging, `ray.train.report`). `fit()` wall time,
which includes Ray Train's start-up and the final validation and checkpoint, is printed too.
Figures only, no assertions.

Ray Train V2 hands the controller one report per worker per poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
2 s by default): a loop that reports more often waits in `ray.train.report`. Each Ray Train run
is repeated for every `--poll-intervals` value to show that cost.

Ray: joins the cluster at RAY_ADDRESS when set, else starts a private local one
(`address="local"`, never one found in /tmp/ray) and stops it at the end.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from adaray import shipped_path
from adaray.runtime import configure_allocator
from adaray.train import (
    RunSettings,
    TrainConfig,
    build_components,
    load_config,
    loader_data,
    prepare_process,
    train_step,
)

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # read by the controller (driver propagates it)


@dataclass
class Row:
    label: str
    workers: int | None
    steps: int
    wall_s: float  # whole run: bare loop from data loading on; Ray Train: fit()
    steps_per_s: float  # steady state (start-up excluded)
    samples_per_s: float  # summed over workers
    final_loss: float
    batch_per_worker: float  # mean samples per step and worker (small data: partial batches)


def bare_loop(cfg: TrainConfig, run: RunSettings, warmup: int) -> Row:
    """The loop's training step without Ray: returns the steady-state rate after `warmup`."""
    start = time.perf_counter()
    prepare_process(run.cpus_per_worker, cfg.seed)
    parts = build_components(cfg, loader_data(cfg, root=run.data, check=False))
    samples, timed_from, loss = 0, time.perf_counter(), torch.tensor(float("nan"))
    for step in range(cfg.max_steps):
        if step == warmup:
            timed_from, samples = time.perf_counter(), 0
        loss, _, batch_size = train_step(parts, cfg.optim.grad_clip)
        samples += batch_size
    end = time.perf_counter()
    timed = max(end - timed_from, 1e-9)
    return Row("bare PyTorch loop", None, cfg.max_steps, end - start,
               (cfg.max_steps - warmup) / timed, samples / timed, loss.item(),
               samples / (cfg.max_steps - warmup))


def ray_train(cfg: TrainConfig, run: RunSettings, workers: int, workdir: Path,
              label: str) -> Row:
    """One Ray Train run; steady-state rates from the timestamps and samples_per_s of its
    MLflow reports (first window and final validating report left out)."""
    import mlflow

    from adaray import tracking
    from adaray.train import build_trainer

    run = replace(run, workers=workers, name=f"bench-{workers}w-{os.getpid()}-{time.time_ns()}",
                  workdir=str(workdir), storage=str(workdir / "runs"))
    trainer = build_trainer(cfg, run)
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(workdir))
    experiment = client.get_experiment_by_name(tracking.experiment_name(cfg.task))
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.run_name = '{run.name}'")
    if not runs:
        raise RuntimeError(f"no MLflow run named {run.name} in {tracking.tracking_uri(workdir)}")
    history = sorted(client.get_metric_history(runs[0].info.run_id, "samples_per_s"),
                     key=lambda m: m.step)
    # Report i is logged (timestamp, rank 0) just before ray.train.report; window i covers
    # steps (step[i-1], step[i]] and that report. Left out: the first window (it holds the
    # first step) and the last report (it validates before logging).
    timed = history[:-1] if len(history) > 2 else history
    windows = [(b.step - a.step, (b.timestamp - a.timestamp) / 1000, b.value)
               for a, b in itertools.pairwise(timed)]
    seconds = sum(dt for _, dt, _ in windows)
    steps = sum(n for n, _, _ in windows)
    # samples_per_s counts the samples of all ranks in the loop's own window timer.
    samples = sum(dt * rate for _, dt, rate in windows)
    final = result.metrics or {}
    return Row(label, workers, cfg.max_steps, wall, steps / seconds, samples / seconds,
               float(final.get("loss", float("nan"))), samples / steps / workers)


def print_table(rows: list[Row]) -> None:
    bare = next((r for r in rows if r.workers is None), None)
    header = (f"{'run':<28} {'workers':>7} {'batch/w':>7} {'steps':>6} {'wall s':>8} "
              f"{'steps/s':>8} {'samples/s':>10} {'vs bare':>8} {'vs 1 worker':>12} "
              f"{'final loss':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        one = next((r for r in rows if r.workers == 1 and r.label == row.label), None)
        vs_bare = f"{row.steps_per_s / bare.steps_per_s:.2f}x" if bare and row.workers else ""
        vs_one = (f"{row.samples_per_s / one.samples_per_s:.2f}x"
                  if one and row.workers and row.workers > 1 else "")
        workers = "-" if row.workers is None else str(row.workers)
        print(f"{row.label:<28} {workers:>7} {row.batch_per_worker:>7.1f} {row.steps:>6} "
              f"{row.wall_s:>8.1f} {row.steps_per_s:>8.2f} {row.samples_per_s:>10.2f} "
              f"{vs_bare:>8} {vs_one:>12} {row.final_loss:>10.4f}")
    print("wall s: bare loop = whole loop incl. data loading and warm-up steps; Ray Train = "
          "fit() incl. worker start-up, final validation and checkpoint.")
    print("batch/w: mean samples per step and worker (a small data set gives partial batches).")
    print("steps/s, samples/s: steady state (bare: after the warm-up steps; Ray Train: between "
          "the first and the last report, from report times and the loop's samples_per_s). "
          "vs bare: Ray Train steps/s over bare steps/s; vs 1 worker: samples/s over 1 "
          "worker's (same poll).")
    print(f"poll: {POLL_ENV} (Ray Train V2's controller takes one report per worker per poll, "
          "so a loop reporting more often than that waits in ray.train.report).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(shipped_path("configs", "tiny.yaml")),
                        help="TrainConfig YAML (default: configs/tiny.yaml)")
    parser.add_argument("--task", default="ivf")
    parser.add_argument("--data", default=str(shipped_path("samples")), help="data folder")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="bare-loop steps not timed")
    parser.add_argument("--log-every", type=int, default=5,
                        help="report interval of the Ray Train runs (rate windows)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="Ray Train worker counts to run (default: 1 2)")
    parser.add_argument("--poll-intervals", nargs="+", default=["default", "0.2"],
                        help=f"{POLL_ENV} values to run Ray Train with; 'default': as set in "
                             "this environment, else Ray's 2 s (default: default 0.2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra TrainConfig override (repeatable)")
    parser.add_argument("--skip-bare", action="store_true", help="only the Ray Train runs")
    parser.add_argument("--verbose", action="store_true", help="show Ray's worker logs")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")

    configure_allocator()
    overrides = [f"task={args.task}", f"run.data={Path(args.data).resolve()}",
                 f"max_steps={args.steps}", f"log_every={args.log_every}",
                 f"val_every={args.steps}", f"ckpt_every={args.steps}", *args.set]
    cfg, run = load_config(args.config, overrides)
    needed = max(args.workers) * run.cpus_per_worker
    print(f"config {args.config} + {overrides[3:]}; data {run.data}; batch "
          f"{cfg.data.batch_size} x {cfg.data.patch_size}px per worker; torch "
          f"{torch.__version__} ({run.cpus_per_worker} thread(s) per worker); "
          f"{os.cpu_count()} cores, {platform.machine()}", flush=True)
    if (os.cpu_count() or 1) < needed:
        print(f"note: {needed} worker CPUs on {os.cpu_count()} cores: workers share cores",
              flush=True)

    rows: list[Row] = []
    if not args.skip_bare:
        rows.append(bare_loop(cfg, run, args.warmup))
        print(f"bare loop done: {rows[-1].steps_per_s:.2f} steps/s", flush=True)

    import ray

    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=args.verbose)
        else:
            ray.init(address="local", num_cpus=max(needed, os.cpu_count() or 1),
                     log_to_driver=args.verbose)
    try:
        with tempfile.TemporaryDirectory(prefix="adaray-bench-") as tmp:
            saved = os.environ.get(POLL_ENV)
            for interval in args.poll_intervals:
                if interval == "default":  # as this environment has it
                    if saved is None:
                        os.environ.pop(POLL_ENV, None)
                    else:
                        os.environ[POLL_ENV] = saved
                    label = f"Ray Train, poll {saved or '2 (default)'} s"
                else:
                    os.environ[POLL_ENV] = str(float(interval))
                    label = f"Ray Train, poll {float(interval):g} s"
                for workers in args.workers:
                    row = ray_train(cfg, run, workers,
                                    Path(tmp) / f"w{workers}-{interval}", label)
                    rows.append(row)
                    print(f"{label}, {workers} worker(s) done: fit {row.wall_s:.1f} s",
                          flush=True)
            if saved is None:
                os.environ.pop(POLL_ENV, None)
            else:
                os.environ[POLL_ENV] = saved
    finally:
        if started:
            ray.shutdown()
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Commands that train: `adaray train`, `adaray tune`, `adaray models` and `adaray demo`."""

from __future__ import annotations

import argparse
import sys

from adaray.cli.arguments import add_pair_arguments, add_ray_arguments, pair_overrides
from adaray.errors import ConfigError
from adaray.runtime import init_ray
from adaray.tasks import TASKS


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray train` (and of jobs/train.py, which takes the same)."""
    add_pair_arguments(parser)
    parser.add_argument("--config", help="config YAML: TrainConfig fields, run settings under "
                                         "run: (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.channels=32 or --set "
                             "run.cpus_per_worker=2 (repeatable)")
    parser.add_argument("--workers", metavar="N|MIN-MAX",
                        help="Ray Train workers (DDP ranks); a range MIN-MAX trains elastically "
                             "on what fits, from MIN up to MAX workers")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, bf16")
    parser.add_argument("--max-steps", type=int, help="total optimizer steps")
    parser.add_argument("--storage", help="checkpoint storage path or URI (s3://...)")
    parser.add_argument("--name", help="run name; rerunning a name in the same storage resumes")
    add_ray_arguments(parser)


def train_from_args(args: argparse.Namespace) -> int:
    """Build the TrainConfig from arguments, check it, start or join Ray, train, summarise."""

    from adaray import tracking
    from adaray.ray_state import placement_groups_released
    from adaray.train import best_checkpoint, build_trainer, load_config

    overrides = pair_overrides(args, max_steps=args.max_steps, **{
        "run.workers": args.workers, "run.storage": args.storage, "run.name": args.name,
        "run.use_gpu": True if args.gpu else None})
    cfg, run = load_config(args.config, [*overrides, *args.set])
    trainer = build_trainer(cfg, run)  # bad config and missing data fail here, before Ray
    init_ray()
    try:
        with placement_groups_released(f"run {trainer.run_config.name}"):
            result = trainer.fit()
    except Exception as exc:  # Ray Train raises the workers' error after its retries
        print(f"adaray train: training failed: {failure_reason(exc)}", file=sys.stderr)
        return 1
    final = result.metrics or {}
    print(f"run {trainer.run_config.name} finished at step {final.get('step')}: "
          f"loss {final.get('loss', float('nan')):.4f}, "
          f"val_score {final.get('val_score', float('nan')):.4f}")
    if (best_found := best_checkpoint(result)) is not None:
        best, best_metrics = best_found
        print(f"best checkpoint (val_score {best_metrics['val_score']:.4f}): "
              f"{_as_uri(best.path, run.storage)}")
    print(f"all checkpoints: {_as_uri(result.path, run.storage)}")
    uri = tracking.tracking_uri(run.workdir)
    print(f"MLflow: {uri} experiment {tracking.experiment_name(cfg.task)}; browse with: "
          f"mlflow ui --backend-store-uri {uri}")
    return 0


def failure_reason(exc: BaseException) -> str:
    """The reason a run failed, in one line: the message of the adaray error (a bad file or
    config) that Ray reports inside its error's traceback text, else the error itself."""
    reasons = [line.split(": ", 1)[1] for line in str(exc).splitlines()
               if line.startswith("adaray.") and "Error: " in line]
    return reasons[-1] if reasons else str(exc)


def _as_uri(path: str, storage: str | None) -> str:
    """A path Ray Train reports inside its storage, as a URI when the storage is one (Ray
    drops the scheme: `bucket/runs/x` for `s3://bucket/runs`)."""
    return f"{storage.split('://', 1)[0]}://{path}" if storage and "://" in storage else path


def cmd_train(args: argparse.Namespace) -> int:
    """`adaray train`: see `add_train_arguments`."""
    return train_from_args(args)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray tune` (and of jobs/tune.py, which takes the same)."""
    add_pair_arguments(parser)
    parser.add_argument("--config", help="base TrainConfig YAML each trial starts from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a base config field (repeatable)")
    parser.add_argument("--space", help="search space YAML (default: tune_spaces/TASK.yaml)")
    parser.add_argument("--samples", type=int, help="number of trials (sweep.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument("--workers-per-trial", type=int, help="DDP workers of each trial")
    parser.add_argument("--gpus-per-trial", type=float,
                        help="GPUs of each trial, shared by its workers (default 0: CPU)")
    parser.add_argument("--storage", help="sweep storage path or URI (default WORKDIR/tune)")
    parser.add_argument("--name", help="sweep name (default TASK-sweep-TIMESTAMP)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep --name after an interruption")
    add_ray_arguments(parser)


def cmd_tune(args: argparse.Namespace) -> int:
    """`adaray tune`: a per-task sweep on Ray Tune (see adaray.tune)."""
    from adaray.config import to_dict
    from adaray.train import load_config
    from adaray.tune import STOP_EARLY, STOP_ERROR, default_space_path, load_space, run_sweep

    base, run = load_config(args.config, [*pair_overrides(args), *args.set])
    sweep_flags = {"num_samples": args.samples, "max_concurrent": args.max_concurrent,
                   "workers_per_trial": args.workers_per_trial,
                   "gpus_per_trial": args.gpus_per_trial}
    sweep_overrides = {k: v for k, v in sweep_flags.items() if v is not None}
    if args.resume:
        if args.name is None:
            raise ConfigError("--resume needs --name: the sweep to continue")
        if args.space or sweep_overrides:
            print("note: --resume continues the sweep as it was started; --space, --samples, "
                  "--max-concurrent and --*-per-trial are ignored", file=sys.stderr)
    space = load_space(args.space or default_space_path(args.task), to_dict(base),
                       sweep_overrides)
    result = run_sweep(base, run, space, name=args.name, storage=args.storage,
                       resume=args.resume)
    stopped = sum(1 for o in result.outcomes if o.stop_reason == STOP_EARLY)
    print(f"sweep {result.name}: {len(result.outcomes)} trials ({stopped} stopped early by "
          f"ASHA) in {result.wall_s:.0f} s; results in {result.path}")
    if result.best is not None:
        print(f"best trial {result.best.trial_id}: {space.sweep.metric} "
              f"{result.best.score:.4f} at step {result.best.steps}")
    print(f"promotion: {result.promotion_note}")
    for outcome in (o for o in result.outcomes if o.stop_reason == STOP_ERROR):
        print(f"trial {outcome.trial_id} failed: {outcome.error}", file=sys.stderr)
    return 1 if result.best is None else 0


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """The actions and arguments of `adaray models`."""
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="versions, scores and aliases")
    listing.add_argument("--task", choices=sorted(TASKS), help="only this task's model")
    listing.add_argument("--workdir", default="adaray_work",
                         help="work folder of the embedded MLflow store (ignored when "
                              "MLFLOW_TRACKING_URI is set)")


def cmd_models(args: argparse.Namespace) -> int:
    """`adaray models list`: registered model versions with their scores and aliases."""
    from datetime import datetime

    from adaray.tracking import ModelRegistry, registered_model_name, short_error, tracking_uri

    uri = tracking_uri(args.workdir)
    name = registered_model_name(args.task) if args.task else None
    try:
        versions = ModelRegistry(uri).versions(name)
    except Exception as exc:  # unreachable server, bad URI: say where, no traceback
        print(f"adaray models: cannot read the model registry at {uri}: {short_error(exc)}",
              file=sys.stderr)
        return 1
    if not versions:
        print(f"no registered adasffuse models at {uri}")
        return 0
    header = f"{'model':16s} {'version':>7s} {'val_score':>9s}  {'aliases':12s} {'sweep':24s} " \
             f"{'trial':14s} created"
    print(header)
    for v in versions:
        score = "-" if v.score is None else f"{v.score:.4f}"
        created = datetime.fromtimestamp(v.created_ms / 1000).strftime("%Y-%m-%d %H:%M")
        print(f"{v.name:16s} {v.version:7d} {score:>9s}  {','.join(v.aliases) or '-':12s} "
              f"{v.tags.get('sweep', '-'):24s} {v.tags.get('trial_id', '-'):14s} {created}")
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray demo`."""
    parser.add_argument("--task", choices=sorted(TASKS), default="ivf")
    parser.add_argument("--data", help="folder to discover pairs in (default: the bundled "
                                       "samples/)")
    parser.add_argument("--workdir", default="adaray_work",
                        help="work folder: MLflow store, checkpoints, sweeps, reports")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per phase (what the tests run)")
    add_ray_arguments(parser)


def cmd_demo(args: argparse.Namespace) -> int:
    """`adaray demo`: train, sweep, promote, evaluate and serve on embedded defaults."""
    from adaray.demo import run_demo

    run_demo(args.task, args.data, args.workdir, quick=args.quick)
    return 0

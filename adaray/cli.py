"""The `adaray` command: one entry point with subcommands."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from adaray.config import load_yaml
from adaray.errors import AdarayError, ConfigError
from adaray.model import AdaSFFuse, ModelConfig
from adaray.runtime import configure_allocator, init_ray
from adaray.tasks import TASKS

VERSIONED_PACKAGES = ("torch", "numpy", "ray", "mlflow", "albumentations",
                      "opencv-python-headless", "scikit-image", "scipy", "mamba-ssm")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _model_config(path: str | None) -> ModelConfig:
    return load_yaml(ModelConfig, path) if path else ModelConfig()


def _build_model(cfg: ModelConfig, seed: int) -> AdaSFFuse:
    torch.manual_seed(seed)
    return AdaSFFuse(cfg).eval()


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, device, active SSD kernel, and the size (and with --model the speed) of a model."""
    from adaray import __version__
    from adaray.model.profile import count_flops, count_parameters, measure_latency
    from adaray.model.ssd import active_ssd_backend

    cfg = _model_config(args.config)
    print(f"adaray {__version__}  (python {platform.python_version()}, {platform.machine()})")
    for name in VERSIONED_PACKAGES:
        print(f"  {name:24s} {_package_version(name)}")
    print(f"device: cpu ({torch.get_num_threads()} torch threads)", end="")
    if torch.cuda.is_available():
        print(f"; cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    else:
        print("; cuda: not available")
    print(f"allocator: glibc malloc without mmap/trim: {configure_allocator()}")
    print(f"SSD kernel: cpu -> {active_ssd_backend('cpu')}", end="")
    if torch.cuda.is_available():
        print(f", cuda -> {active_ssd_backend('cuda')}", end="")
    print(f"  (override with ADARAY_SSD=torch|triton; now {os.environ.get('ADARAY_SSD', 'auto')})")

    model = _build_model(cfg, seed=0)
    label = args.config or "default ModelConfig"
    print(f"model ({label}): {count_parameters(model):,} parameters")
    for size in args.sizes:
        gflops = count_flops(cfg, size, size) / 1e9
        print(f"  forward FLOPs at {size}x{size}: {gflops:,.1f} GFLOP")
    if args.model:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device)
        for size in args.sizes:
            latency = measure_latency(model, size, size, repeats=args.repeats)
            print(f"  latency at {size}x{size} on {device.type}: {latency * 1000:,.0f} ms "
                  f"(median of {args.repeats})")
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    """Fuse one pair (A B -o OUT.png) or every pair under --data (-o OUTDIR): with a served
    model (--url), a trained one (--model), the task's shipped model (models/<task>.pt, the
    default) or an initialised one (--config)."""
    from adaray.checkpoint import load_model, shipped_model
    from adaray.data import check_pairs, discover_pairs, read_image, write_image
    from adaray.fusion import fuse_with_weights

    out = Path(args.output)
    if args.data:
        if args.a or args.b:
            raise SystemExit("adaray fuse: give either two images or --data, not both")
        pairs = discover_pairs(args.data, args.task, a_dir=args.a_dir, b_dir=args.b_dir)
        check_pairs(pairs)  # unreadable files and size mismatches fail before any work
        jobs = [(p.a_path, p.b_path, out / p.group / f"{p.stem}.png") for p in pairs]
    else:
        if not (args.a and args.b):
            raise SystemExit("adaray fuse: give two images A B (or --data DIR)")
        jobs = [(Path(args.a), Path(args.b), out)]
    if args.url and (args.model or args.config or args.save_weights):
        raise SystemExit("adaray fuse: --url uses the served model; drop --model/--config/"
                         "--save-weights")
    if args.model and args.config:
        raise SystemExit("adaray fuse: --config builds an untrained model; drop it with --model")
    model = None
    if args.model:
        from adaray.tracking import load_model_from, tracking_uri

        model = load_model_from(args.model, tracking_uri(args.workdir))
    elif args.config:
        model = _build_model(_model_config(args.config), seed=args.seed)
        print(f"note: fusing with an initialised (untrained) model of {args.config} "
              f"(seed {args.seed})", file=sys.stderr)
    elif not args.url:
        shipped = shipped_model(args.task)
        if shipped is None:
            raise ConfigError(f"no model given (--model, --url) and no shipped model for "
                              f"task {args.task} (models/{args.task}.pt)")
        model = load_model(shipped)
        print(f"note: fusing with the shipped {args.task} model {shipped} (--model to choose "
              "another)", file=sys.stderr)
    for index, (path_a, path_b, target) in enumerate(jobs, start=1):
        start = time.perf_counter()
        if model is None:
            from adaray.serving import RequestError, post_fuse

            try:
                png, _ = post_fuse(args.url, path_a, path_b, args.task)
            except RequestError as exc:
                print(f"adaray fuse: {args.url} refused {path_a.name} + {path_b.name} "
                      f"(HTTP {exc.status}): {exc.reason}", file=sys.stderr)
                return 1
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
        else:
            fused, weights = fuse_with_weights(model, read_image(path_a), read_image(path_b))
            write_image(target, fused)
            if args.save_weights:
                if weights is None:
                    raise SystemExit("adaray fuse: --save-weights: this model's head predicts "
                                     "pixels, not weights of the sources")
                write_image(target.with_name(f"{target.stem}_weights.png"), weights)
        sources = f"{path_a.parent.name}/{path_a.name} + {path_b.parent.name}/{path_b.name}"
        print(f"[{index}/{len(jobs)}] {sources} -> {target} "
              f"({time.perf_counter() - start:.2f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`adaray serve`: the Serve app of serve/config.yaml on a local (or RAY_ADDRESS) cluster,
    until SIGTERM or Ctrl-C."""
    import signal
    import threading

    import ray
    from ray import serve

    from adaray.serving import read_serve_config, serve_app_module, serve_env_vars

    spec = read_serve_config(args.config)  # bad args fail here, before Ray starts
    host = args.host or spec.host
    port = args.port or spec.port
    app_module = serve_app_module()
    stop = threading.Event()
    init_ray(serve_env_vars())
    # After ray.init, whose core worker installs its own (aborting) SIGTERM handler.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app_module.build_application(spec.args, spec.deployments), name=spec.name,
                  route_prefix=spec.route_prefix, blocking=False)
        print(f"adaray serve: http://{host}:{port}{spec.route_prefix.rstrip('/')}/fuse "
              f"(docs at /docs); tasks {', '.join(spec.args.get('tasks') or TASKS)}; "
              "Ctrl-C or SIGTERM stops", flush=True)
        stop.wait()
    finally:
        print("adaray serve: shutting down", flush=True)
        serve.shutdown()
        ray.shutdown()
    return 0


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """--resource-wait: of every command that runs on Ray."""
    parser.add_argument("--resource-wait", type=_seconds, metavar="SECONDS",
                        help="report a request that waits this long for CPUs/GPUs, naming "
                             "what holds them (default: $ADARAY_RESOURCE_WAIT_S or 120); the "
                             "demo stops there")


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """--task, --data, --a-dir, --b-dir: where the pairs are (train, tune, evaluate)."""
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--data", required=True, help="folder to discover pairs in")
    parser.add_argument("--a-dir", help="folder of A images, relative to --data or absolute")
    parser.add_argument("--b-dir", help="folder of B images, relative to --data or absolute")


def _pair_overrides(args: argparse.Namespace, **flags: Any) -> list[str]:
    """`key=value` TrainConfig overrides of the pair arguments and `flags` (None skipped)."""
    values = {"task": args.task, "data.root": args.data, "data.a_dir": args.a_dir,
              "data.b_dir": args.b_dir, **flags}
    return [f"{key}={value}" for key, value in values.items() if value is not None]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray train` (and of jobs/train.py, which takes the same)."""
    add_pair_arguments(parser)
    parser.add_argument("--config", help="TrainConfig YAML (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.channels=32 (repeatable)")
    parser.add_argument("--workers", type=int, help="Ray Train workers (DDP ranks)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, bf16")
    parser.add_argument("--max-steps", type=int, help="total optimizer steps")
    parser.add_argument("--storage", help="checkpoint storage path or URI (s3://...)")
    parser.add_argument("--name", help="run name; rerunning a name in the same storage resumes")
    add_ray_arguments(parser)


def train_from_args(args: argparse.Namespace) -> int:
    """Build the TrainConfig from arguments, check it, start or join Ray, train, summarise."""

    from adaray import tracking
    from adaray.ray_state import placement_groups_released
    from adaray.train import best_checkpoint, build_trainer, load_train_config

    overrides = _pair_overrides(args, workers=args.workers, max_steps=args.max_steps,
                                storage=args.storage, name=args.name,
                                use_gpu=True if args.gpu else None)
    cfg = load_train_config(args.config, [*overrides, *args.set])
    trainer = build_trainer(cfg)  # bad config and missing data fail here, before Ray starts
    init_ray()
    try:
        with placement_groups_released(f"run {trainer.run_config.name}"):
            result = trainer.fit()
    except Exception as exc:  # Ray Train raises the workers' error after its retries
        print(f"adaray train: training failed: {exc}", file=sys.stderr)
        return 1
    final = result.metrics or {}
    print(f"run {trainer.run_config.name} finished at step {final.get('step')}: "
          f"loss {final.get('loss', float('nan')):.4f}, "
          f"val_score {final.get('val_score', float('nan')):.4f}")
    if (best_found := best_checkpoint(result)) is not None:
        best, best_metrics = best_found
        print(f"best checkpoint (val_score {best_metrics['val_score']:.4f}): {best.path}")
    print(f"all checkpoints: {result.path}")
    print(f"MLflow: {tracking.tracking_uri(cfg.workdir)} experiment "
          f"{tracking.experiment_name(cfg.task)}; browse with: mlflow ui --backend-store-uri "
          f"{tracking.tracking_uri(cfg.workdir)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`adaray train`: see `add_train_arguments`."""
    return train_from_args(args)


def cmd_tune(args: argparse.Namespace) -> int:
    """`adaray tune`: a per-task sweep on Ray Tune (see adaray.tune)."""
    from adaray.config import to_dict
    from adaray.train import load_train_config
    from adaray.tune import STOP_EARLY, STOP_ERROR, default_space_path, load_space, run_sweep

    base = load_train_config(args.config, [*_pair_overrides(args), *args.set])
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
    result = run_sweep(base, space, name=args.name, storage=args.storage, resume=args.resume)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """`adaray demo`: train, sweep, promote, evaluate and serve on embedded defaults."""
    from adaray.demo import run_demo

    run_demo(args.task, args.data, args.workdir, quick=args.quick)
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray evaluate` (and of jobs/evaluate.py, which takes the same)."""
    add_pair_arguments(parser)
    parser.add_argument("--model", action="append", required=True, metavar="SOURCE",
                        help="model.pt, a checkpoint folder, runs:/ID/model, "
                             "models:/NAME@ALIAS or baseline:NAME (average, max, dwt, "
                             "laplacian, mertens); repeatable")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--metrics", nargs="+", help="metrics to compute (default: all)")
    parser.add_argument("--split", choices=["all", "val"], default="all",
                        help="every pair (default) or only training's held-out pairs")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="the split's validation fraction (data.val_fraction; default 0.1)")
    parser.add_argument("--workdir", default="adaray_work",
                        help="work folder of the embedded MLflow store")
    add_ray_arguments(parser)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`adaray evaluate`: every pair with every model on Ray; tables, images and a grid."""
    from adaray.evaluate import evaluate_models

    result = evaluate_models(args.task, args.data, args.model, args.out, a_dir=args.a_dir,
                             b_dir=args.b_dir, metrics=args.metrics, workdir=args.workdir,
                             split=args.split, val_fraction=args.val_fraction)
    print((result.out / "summary.md").read_text())
    print(f"evaluated {len(result.rows)} fused images in {result.wall_s:.0f} s: "
          f"{result.out}/summary.md, metrics_per_pair.csv, grid.png, fused/")
    return 0


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray benchmark-quality` (and of jobs/benchmark_quality.py)."""
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS),
                        default=["ivf", "mef", "mff", "mif"])
    parser.add_argument("--data", required=True,
                        help="dataset tree with every task's folders (../shared/data/fusion)")
    parser.add_argument("--config-dir", default="configs",
                        help="folder of the per-task training configs TASK.yaml")
    parser.add_argument("--model", action="append", default=[], metavar="TASK=SOURCE",
                        help="evaluate this model for TASK instead of training one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of every training config (repeatable)")
    parser.add_argument("--max-steps", type=int, help="training steps of every task")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="held-out fraction for given models (trained ones use theirs)")
    parser.add_argument("--out", default="docs/results.md", help="the results page")
    parser.add_argument("--workdir", default="adaray_work",
                        help="work folder: MLflow store, checkpoints, fused images")
    parser.add_argument("--ship", metavar="DIR",
                        help="also write each trained model as DIR/TASK.pt with a model card "
                             "DIR/TASK.md (the shipped models/ are made so)")
    add_ray_arguments(parser)


def cmd_benchmark_quality(args: argparse.Namespace) -> int:
    """`adaray benchmark-quality`: train or take a model per task, score it against every
    baseline on the held-out pairs, write the results page."""
    from adaray.quality import benchmark_quality

    models = {}
    for item in args.model:
        task, sep, source = item.partition("=")
        if not sep or not source:
            raise ConfigError(f"--model {item!r}: expected TASK=SOURCE, e.g. mif=model.pt")
        models[task] = source
    overrides = [*args.set, *([f"max_steps={args.max_steps}"] if args.max_steps else [])]
    results = benchmark_quality(
        args.tasks, args.data, args.out, config_dir=args.config_dir, models=models,
        overrides=overrides, workdir=args.workdir, val_fraction=args.val_fraction,
        ship=args.ship, command=" ".join(["adaray benchmark-quality",
                          *[a for a in sys.argv[1:] if a != "benchmark-quality"]]))
    print(f"\nwrote {args.out}:")
    for r in results:
        print(f"  {r.task}: {r.verdict}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `adaray` command."""
    parser = argparse.ArgumentParser(prog="adaray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, device, SSD kernel, model size")
    info.add_argument("--model", action="store_true",
                      help="also measure inference latency of the model")
    info.add_argument("--config", help="ModelConfig YAML (default: the paper's config)")
    info.add_argument("--sizes", type=int, nargs="+", default=[256, 512],
                      help="square image sizes for FLOPs and latency (default: 256 512)")
    info.add_argument("--repeats", type=int, default=3, help="latency repetitions (median)")
    info.set_defaults(func=cmd_info)

    fuse = sub.add_parser("fuse", help="fuse an image pair, or every pair in a folder")
    fuse.add_argument("a", nargs="?", help="source A image")
    fuse.add_argument("b", nargs="?", help="source B image")
    fuse.add_argument("-o", "--output", required=True,
                      help="output PNG (one pair) or folder (--data)")
    fuse.add_argument("--task", choices=sorted(TASKS), default="ivf",
                      help="fusion task (folder names for --data)")
    fuse.add_argument("--data", help="folder to discover pairs in (see README, 'Data')")
    fuse.add_argument("--a-dir", help="folder of A images, relative to --data or absolute")
    fuse.add_argument("--b-dir", help="folder of B images, relative to --data or absolute")
    fuse.add_argument("--model", help="trained model: model.pt, a checkpoint folder, "
                                      "runs:/ID/model or models:/adasffuse-TASK@champion "
                                      "(default: the shipped models/TASK.pt)")
    fuse.add_argument("--url", help="fuse with the Serve app at this URL (adaray serve)")
    fuse.add_argument("--workdir", default="adaray_work",
                      help="work folder of the embedded MLflow store (for --model URIs)")
    fuse.add_argument("--config", help="ModelConfig YAML of an initialised (untrained) model")
    fuse.add_argument("--save-weights", action="store_true",
                      help="also write the weight of A per pixel (white = A) as "
                           "OUT_weights.png, for models whose head composes the sources")
    fuse.add_argument("--seed", type=int, default=0, help="initialisation seed")
    fuse.set_defaults(func=cmd_fuse)

    quality = sub.add_parser("benchmark-quality",
                             help="train per task, score against the baselines, write a page")
    add_quality_arguments(quality)
    quality.set_defaults(func=cmd_benchmark_quality)

    demo = sub.add_parser("demo", help="train, sweep, promote, evaluate and serve, locally")
    demo.add_argument("--task", choices=sorted(TASKS), default="ivf")
    demo.add_argument("--data", help="folder to discover pairs in (default: the bundled "
                                     "samples/)")
    demo.add_argument("--workdir", default="adaray_work",
                      help="work folder: MLflow store, checkpoints, sweeps, reports")
    demo.add_argument("--quick", action="store_true",
                      help="a few steps per phase (what the tests run)")
    add_ray_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser("evaluate", help="score models and baselines on pairs (Ray)")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    serve_cmd = sub.add_parser("serve", help="serve the champion models over HTTP (Ray Serve)")
    serve_cmd.add_argument("--config", default=str(Path(__file__).resolve().parent.parent
                                                  / "serve" / "config.yaml"),
                           help="Serve config (default: serve/config.yaml)")
    serve_cmd.add_argument("--host", help="HTTP host (default: the config's, 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="HTTP port (default: the config's, 8000)")
    add_ray_arguments(serve_cmd)
    serve_cmd.set_defaults(func=cmd_serve)

    train = sub.add_parser("train", help="train on Ray Train, tracked in MLflow")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser("tune", help="sweep loss weights and block counts on Ray Tune")
    add_tune_arguments(tune)
    tune.set_defaults(func=cmd_tune)

    models = sub.add_parser("models", help="registered models (the MLflow Model Registry)")
    models_sub = models.add_subparsers(dest="action", required=True)
    models_list = models_sub.add_parser("list", help="versions, scores and aliases")
    models_list.add_argument("--task", choices=sorted(TASKS), help="only this task's model")
    models_list.add_argument("--workdir", default="adaray_work",
                             help="work folder of the embedded MLflow store (ignored when "
                                  "MLFLOW_TRACKING_URI is set)")
    models_list.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `adaray` console script."""
    args = build_parser().parse_args(argv)
    return main_guarded(args.func, args, args.command)


def main_guarded(command: Any, args: argparse.Namespace, name: str) -> int:
    """Run a command; bad input (`adaray.errors`: config, data, model files, requests) ends
    with one error line and exit code 2, anything else with its traceback."""
    from adaray.ray_state import WAIT_LIMIT_ENV

    configure_allocator()
    if getattr(args, "resource_wait", None) is not None:
        os.environ[WAIT_LIMIT_ENV] = str(args.resource_wait)
    try:
        return command(args)
    except AdarayError as exc:
        print(f"adaray {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

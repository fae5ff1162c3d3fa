"""Commands that use a model: `adaray info`, `adaray fuse` and `adaray serve`."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from adaray import shipped_path
from adaray.cli.arguments import add_ray_arguments
from adaray.config import load_yaml
from adaray.errors import ConfigError
from adaray.model import AdaSFFuse, ModelConfig
from adaray.runtime import configure_allocator, init_ray
from adaray.serving.client import DEFAULT_TOKEN_ENV
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


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray info`."""
    parser.add_argument("--model", action="store_true",
                        help="also measure inference latency of the model")
    parser.add_argument("--config", help="ModelConfig YAML (default: the paper's config)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512],
                        help="square image sizes for FLOPs and latency (default: 256 512)")
    parser.add_argument("--repeats", type=int, default=3, help="latency repetitions (median)")


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


def add_fuse_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray fuse`."""
    parser.add_argument("a", nargs="?", help="source A image")
    parser.add_argument("b", nargs="?", help="source B image")
    parser.add_argument("-o", "--output", required=True,
                        help="output PNG (one pair) or folder (--data)")
    parser.add_argument("--task", choices=sorted(TASKS), default="ivf",
                        help="fusion task (folder names for --data)")
    parser.add_argument("--data", help="folder to discover pairs in (see README, 'Data')")
    parser.add_argument("--a-dir", help="folder of A images, relative to --data or absolute")
    parser.add_argument("--b-dir", help="folder of B images, relative to --data or absolute")
    parser.add_argument("--model", help="trained model: model.pt, a checkpoint folder, "
                                        "runs:/ID/model or models:/adasffuse-TASK@champion "
                                        "(default: the shipped models/TASK.pt)")
    parser.add_argument("--url", help="fuse with the Serve app at this URL (adaray serve)")
    parser.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME",
                        help="with --url: environment variable holding the app's bearer token "
                             "(its auth_token_env; default %(default)s; unset: no token sent)")
    parser.add_argument("--workdir", default="adaray_work",
                        help="work folder of the embedded MLflow store (for --model URIs)")
    parser.add_argument("--config", help="ModelConfig YAML of an initialised (untrained) model")
    parser.add_argument("--save-weights", action="store_true",
                        help="also write the weight of A per pixel (white = A) as "
                             "OUT_weights.png, for models whose head composes the sources")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")


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
        from adaray.loading import load_model_from
        from adaray.tracking import tracking_uri

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
                png, _ = post_fuse(args.url, path_a, path_b, args.task,
                                   token=os.environ.get(args.token_env) or None)
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


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray serve`."""
    parser.add_argument("--config", default=str(shipped_path("serve", "config.yaml")),
                        help="Serve config (default: the shipped serve/config.yaml)")
    parser.add_argument("--host", help="HTTP host (default: the config's, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default: the config's, 8000)")
    add_ray_arguments(parser)


def cmd_serve(args: argparse.Namespace) -> int:
    """`adaray serve`: the Serve app of serve/config.yaml on a local (or RAY_ADDRESS) cluster,
    until SIGTERM or Ctrl-C."""
    import signal
    import threading

    import ray
    from ray import serve

    from adaray.serving import read_serve_config
    from adaray.serving.app import build_application

    spec = read_serve_config(args.config)  # bad args fail here, before Ray starts
    spec.config.bearer_token()  # so does a missing token variable
    host = args.host or spec.host
    port = args.port or spec.port
    stop = threading.Event()
    init_ray()
    # After ray.init, whose core worker installs its own (aborting) SIGTERM handler.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_application(spec.args, spec.deployments), name=spec.name,
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

"""Commands that score models: `adaray evaluate`, `adaray benchmark-quality` and
`adaray downstream`."""

from __future__ import annotations

import argparse
import sys

from adaray.cli.arguments import add_pair_arguments, add_ray_arguments
from adaray.errors import ConfigError
from adaray.tasks import TASKS


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
    parser.add_argument("--config-dir",
                        help="folder of the per-task training configs TASK.yaml (default: the "
                             "shipped recipes, configs/)")
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


def add_downstream_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `adaray downstream` (and of jobs/downstream.py)."""
    from adaray.downstream.detector import ARCHITECTURES, DetectorConfig
    from adaray.downstream.labels import LABEL_SETS

    defaults = DetectorConfig()
    parser.add_argument("--data", required=True,
                        help="labelled pairs: infrared/, visible/, labels/<set>/, classes.txt "
                             "(as ../shared/data/downstream/MSRS-det)")
    parser.add_argument("--model", action="append", default=[], metavar="SOURCE",
                        help="a fusion model (model.pt, checkpoint folder, runs:/, "
                             "models:/NAME@ALIAS) or baseline:NAME; repeatable. Infrared and "
                             "visible alone are always inputs")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--labels", choices=LABEL_SETS, default="union",
                        help="ground truth for every input (default: union of the infrared "
                             "and visible boxes, overlapping boxes of a class merged)")
    parser.add_argument("--seeds", type=int, default=3, help="trainings per input (default 3)")
    parser.add_argument("--detector", choices=ARCHITECTURES, default=defaults.arch,
                        help=f"torchvision detector (default {defaults.arch})")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help=f"training epochs per input and seed (default {defaults.epochs})")
    parser.add_argument("--weights", help="local detector weights to start from (tensors that "
                                          "fit by name and shape; default: from scratch)")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="held-out share of the pairs (name-hash split; default 0.3)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on a few images: checks the pipeline, not detectors")
    parser.add_argument("--workdir", default="adaray_work",
                        help="work folder of the embedded MLflow store")
    add_ray_arguments(parser)


def cmd_downstream(args: argparse.Namespace) -> int:
    """`adaray downstream`: the same detector trained on infrared, visible and fused images."""
    from adaray.downstream import DetectorConfig, run_downstream

    detector = DetectorConfig(arch=args.detector, epochs=args.epochs)
    result = run_downstream(args.data, args.model, args.out, labels=args.labels,
                            seeds=args.seeds, detector=detector, weights=args.weights,
                            test_fraction=args.test_fraction, quick=args.quick,
                            workdir=args.workdir)
    print(f"{len(result.results)} trainings in {result.wall_s:.0f} s: {result.out}/summary.md, "
          f"summary.json, per_class.csv, map.png, detections.png")
    return 0

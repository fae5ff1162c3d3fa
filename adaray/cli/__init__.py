"""The `adaray` command: one entry point with subcommands.

Each subcommand has an `add_<command>_arguments(parser)` and a `cmd_<command>(args)` in the
module of its area: `inference` (info, fuse, serve), `training` (train, tune, models, demo) and
`evaluation` (evaluate, benchmark-quality, downstream); the scripts in jobs/ take the same
arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from adaray.cli import evaluation, inference, training
from adaray.errors import AdarayError
from adaray.runtime import configure_allocator

# name, help, add arguments, run
COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None],
                     Callable[[argparse.Namespace], int]]] = [
    ("info", "versions, device, SSD kernel, model size",
     inference.add_info_arguments, inference.cmd_info),
    ("fuse", "fuse an image pair, or every pair in a folder",
     inference.add_fuse_arguments, inference.cmd_fuse),
    ("benchmark-quality", "train per task, score against the baselines, write a page",
     evaluation.add_quality_arguments, evaluation.cmd_benchmark_quality),
    ("downstream", "train a detector on infrared, visible and fused images; compare mAP",
     evaluation.add_downstream_arguments, evaluation.cmd_downstream),
    ("demo", "train, sweep, promote, evaluate and serve, locally",
     training.add_demo_arguments, training.cmd_demo),
    ("evaluate", "score models and baselines on pairs (Ray)",
     evaluation.add_evaluate_arguments, evaluation.cmd_evaluate),
    ("serve", "serve the champion models over HTTP (Ray Serve)",
     inference.add_serve_arguments, inference.cmd_serve),
    ("train", "train on Ray Train, tracked in MLflow",
     training.add_train_arguments, training.cmd_train),
    ("tune", "sweep loss weights and block counts on Ray Tune",
     training.add_tune_arguments, training.cmd_tune),
    ("models", "registered models (the MLflow Model Registry)",
     training.add_models_arguments, training.cmd_models),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `adaray` command."""
    parser = argparse.ArgumentParser(prog="adaray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in COMMANDS:
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(func=run)
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

"""Arguments that several `adaray` commands share."""

from __future__ import annotations

import argparse
from typing import Any

from adaray.tasks import TASKS


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


def pair_overrides(args: argparse.Namespace, **flags: Any) -> list[str]:
    """`key=value` TrainConfig overrides of the pair arguments and `flags` (None skipped)."""
    values = {"task": args.task, "run.data": args.data, "data.a_dir": args.a_dir,
              "data.b_dir": args.b_dir, **flags}
    return [f"{key}={value}" for key, value in values.items() if value is not None]

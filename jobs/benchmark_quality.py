"""`ray job submit -- python jobs/benchmark_quality.py ...`: the arguments of `adaray
benchmark-quality`.

Joins the cluster when RAY_ADDRESS is set (as it is under `ray job submit`), starts a local Ray
otherwise. `--data` must be readable on every node, and `--workdir` (checkpoints, fused images)
on a filesystem shared by the nodes.
"""

import argparse
import sys

from adaray.cli import main_guarded
from adaray.cli.evaluation import add_quality_arguments, cmd_benchmark_quality

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_quality_arguments(parser)
    sys.exit(main_guarded(cmd_benchmark_quality, parser.parse_args(), "benchmark-quality"))

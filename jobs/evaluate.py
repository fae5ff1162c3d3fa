"""`ray job submit -- python jobs/evaluate.py ...`: the same arguments as `adaray evaluate`.

Joins the cluster when RAY_ADDRESS is set (as it is under `ray job submit`), starts a local Ray
otherwise. `--data` and model files must be readable on every node; `--out` is written by the
workers that fuse, so it must be on a shared filesystem on a cluster.
"""

import argparse
import sys

from adaray.cli import main_guarded
from adaray.cli.evaluation import add_evaluate_arguments, cmd_evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_evaluate_arguments(parser)
    sys.exit(main_guarded(cmd_evaluate, parser.parse_args(), "evaluate"))

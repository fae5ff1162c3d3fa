"""`ray job submit -- python jobs/downstream.py ...`: the same arguments as `adaray downstream`.

Joins the cluster when RAY_ADDRESS is set (as it is under `ray job submit`), starts a local Ray
otherwise. The trainings (inputs x seeds) run as Ray tasks side by side. As for
jobs/evaluate.py, `--data` and model files must be readable on the driver's node and `--out`
is written by the workers that fuse, so on a cluster it must be on a shared filesystem.
"""

import argparse
import sys

from adaray.cli import main_guarded
from adaray.cli.evaluation import add_downstream_arguments, cmd_downstream

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_downstream_arguments(parser)
    sys.exit(main_guarded(cmd_downstream, parser.parse_args(), "downstream"))

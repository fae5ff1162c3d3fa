"""`ray job submit -- python jobs/tune.py ...`: the same arguments as `adaray tune`.

Joins the cluster when RAY_ADDRESS is set (as it is under `ray job submit`), starts a local Ray
otherwise. Trials run as Ray Train runs on the cluster's workers; the sweep's storage must be
reachable from every node (`--storage s3://...` or a shared filesystem).
"""

import argparse
import sys

from adaray.cli import main_guarded
from adaray.cli.training import add_tune_arguments, cmd_tune

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_tune_arguments(parser)
    sys.exit(main_guarded(cmd_tune, parser.parse_args(), "tune"))

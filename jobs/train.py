"""`ray job submit -- python jobs/train.py ...`: the same arguments as `adaray train`.

Joins the cluster when RAY_ADDRESS is set (as it is under `ray job submit`), starts a local Ray
otherwise.
"""

import argparse
import sys

from adaray.cli import main_guarded
from adaray.cli.training import add_train_arguments, train_from_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_train_arguments(parser)
    sys.exit(main_guarded(train_from_args, parser.parse_args(), "train"))

"""adaray: train, tune, track and serve AdaSFFuse on Ray."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout adaray runs from: configs/, samples/ and serve/ (the Serve app) live here.
REPO_ROOT = Path(__file__).resolve().parent.parent

"""adaray: train, tune, track and serve AdaSFFuse on Ray."""

__version__ = "0.1.0"

"""The AdaSFFuse network, its config and its SSD kernels."""

from adaray.model.config import ModelConfig
from adaray.model.network import AdaSFFuse

__all__ = ["AdaSFFuse", "ModelConfig"]

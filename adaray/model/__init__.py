"""The AdaSFFuse network, its config and its SSD kernels."""

from adaray.model.config import HEAD_FIELDS, ModelConfig
from adaray.model.network import AdaSFFuse

__all__ = ["HEAD_FIELDS", "AdaSFFuse", "ModelConfig"]

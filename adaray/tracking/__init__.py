"""MLflow tracking for adaray: where runs go (`uri`), the outage-proof run logger (`tracker`),
and the model registry with downloads of logged models (`registry`).

This package is the only adaray code that imports mlflow, and it does so lazily, inside
functions, so importing adaray never loads mlflow. Turning a logged model into a model is
`adaray.loading`'s job; it imports this package, never the other way round.
"""

from __future__ import annotations

from adaray.tracking.registry import ModelRegistry, ModelVersionInfo, download_model
from adaray.tracking.tracker import Tracker, flatten, short_error
from adaray.tracking.uri import (
    CHAMPION_ALIAS,
    HTTP_ENV_DEFAULTS,
    RegisteredModelRef,
    artifact_root,
    experiment_name,
    parse_model_uri,
    registered_model_name,
    tracking_uri,
)

__all__ = [
    "CHAMPION_ALIAS",
    "HTTP_ENV_DEFAULTS",
    "ModelRegistry",
    "ModelVersionInfo",
    "RegisteredModelRef",
    "Tracker",
    "artifact_root",
    "download_model",
    "experiment_name",
    "flatten",
    "parse_model_uri",
    "registered_model_name",
    "short_error",
    "tracking_uri",
]

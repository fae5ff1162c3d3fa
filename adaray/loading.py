"""Loading a fusion model from any source a user can name: the one loader of
`adaray fuse --model`, `adaray evaluate` and the Serve app.

A source is a model file or checkpoint folder (`adaray.checkpoint`), a logged model (`runs:/`,
`models:/`, downloaded through `adaray.tracking`), or a classical baseline (`baseline:NAME`).
"""

from __future__ import annotations

import tempfile

from torch import nn

from adaray.checkpoint import load_model
from adaray.errors import AdarayError, InputNotFoundError, ModelFileError
from adaray.model import AdaSFFuse
from adaray.tracking import download_model, short_error


def load_model_from(source: str, tracking_uri: str | None = None) -> nn.Module:
    """A model from a logged-model URI (`runs:/`, `models:/`), a classical baseline
    (`baseline:NAME`) or a model file / checkpoint folder path."""
    from adaray.baselines import BASELINE_PREFIX, get_baseline

    if source.startswith(BASELINE_PREFIX):
        return get_baseline(source)
    if source.startswith(("runs:/", "models:/")):
        return load_logged_model(source, tracking_uri)
    return load_model(source)


def load_logged_model(model_uri: str, tracking_uri: str | None = None) -> AdaSFFuse:
    """Download a logged model (`runs:/ID/model`, `models:/NAME@ALIAS`, `models:/NAME/VERSION`)
    and load it with weights_only=True. `tracking_uri` (e.g. `tracking_uri(workdir)`) defaults to
    MLflow's own (MLFLOW_TRACKING_URI); the registry is MLFLOW_REGISTRY_URI, else the tracking URI.

    Raises RuntimeError when the artifacts cannot be found or downloaded, ConfigError for a
    malformed URI, ModelFileError or InputNotFoundError when they are not an adaray model; every
    message names `model_uri`.
    """
    with tempfile.TemporaryDirectory(prefix="adaray-download-") as tmp:
        try:
            local = download_model(model_uri, tmp, tracking_uri)
        except AdarayError:
            raise
        except Exception as exc:
            raise RuntimeError(f"{model_uri}: cannot download model ({short_error(exc)})") from exc
        try:
            return load_model(local)
        except (ModelFileError, InputNotFoundError) as exc:
            raise type(exc)(f"{model_uri}: {exc}") from None

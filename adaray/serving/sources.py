"""Which model serves a task, and loading it in a replica.

A task's source is a model file, a checkpoint folder, `runs:/ID/model`, `models:/NAME/VERSION`
or `models:/NAME@ALIAS`. While an alias names no version, the task's shipped model
(models/<task>.pt) stands in for it when the config allows (`ServeConfig.fallback_source`).
`describe_source` makes that decision; loading (`load_task_model`) and the `/models` answer
both go through it.
"""

from __future__ import annotations

from typing import Any

from adaray.errors import RequestError
from adaray.loading import load_model_from
from adaray.serving.config import ServeConfig
from adaray.tracking import ModelRegistry, parse_model_uri


def describe_source(config: ServeConfig, task: str,
                    registry: ModelRegistry | None = None) -> dict[str, Any]:
    """The model that serves `task`: {"source", "version", "score"}, plus "alias" for a
    registered alias (version None while the alias names no version) or "instead_of" naming
    the alias when the shipped model stands in for it. Registry errors propagate."""
    source = config.model_source(task)
    info: dict[str, Any] = {"source": source, "version": None, "score": None}
    ref = parse_model_uri(source)
    if ref is None or ref.alias is None:
        return info
    version = (registry or ModelRegistry(config.tracking_uri())).alias_version(ref.name,
                                                                               ref.alias)
    fallback = config.fallback_source(task)
    if version is None and fallback is not None:
        return {**info, "source": fallback, "instead_of": source}
    if version is None:
        return {**info, "alias": ref.alias}
    return {**info, "alias": ref.alias, "version": version.version, "score": version.score}


def load_task_model(config: ServeConfig, task: str) -> tuple[Any, dict[str, Any]]:
    """Load the model that serves `task`: (model, `describe_source`'s info).

    Raises RequestError(503) with the reason when it cannot be loaded (an alias naming no
    version and no shipped model, the registry unreachable, a missing or foreign file).
    """
    tracking_uri = config.tracking_uri()
    try:
        info = describe_source(config, task)
        if "alias" in info and info["version"] is None:
            raise RequestError(503, f"model {info['source']} is not available: registered "
                                    f"model {parse_model_uri(info['source']).name} has no "
                                    f"version with alias {info['alias']!r} at {tracking_uri} "
                                    "(run a sweep, or set models.<task>)")
        model = load_model_from(info["source"], tracking_uri)
    except RequestError:
        raise
    except Exception as exc:  # any other failure to load leaves the task unavailable
        raise RequestError(503, f"model {config.model_source(task)} is not available: "
                                f"{exc}") from None
    return model, info

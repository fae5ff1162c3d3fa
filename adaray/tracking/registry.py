"""The MLflow Model Registry as adaray uses it, and downloads of logged models.

`ModelRegistry` registers a run's adaray model as a version tagged with its validation score
(SCORE_TAG), moves the `champion` alias only to a better-scoring version, and lists versions.
`download_model` fetches a logged model's artifacts (`runs:/`, or `models:/` resolved against
the registry) for `adaray.loading`, which turns them into a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adaray.tracking.uri import (
    CHAMPION_ALIAS,
    MODEL_ARTIFACT_PATH,
    REGISTERED_MODEL_PREFIX,
    parse_model_uri,
    set_http_env_defaults,
)

SCORE_TAG = "val_score"  # model version tag: the validation score that ranks champions


@dataclass
class ModelVersionInfo:
    """One registered model version as adaray reads it (score from the SCORE_TAG tag)."""

    name: str
    version: int
    score: float | None
    aliases: list[str]
    run_id: str
    source: str
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)


def _version_info(mv: Any) -> ModelVersionInfo:
    try:
        score: float | None = float(mv.tags[SCORE_TAG])
    except (KeyError, ValueError):
        score = None
    return ModelVersionInfo(name=mv.name, version=int(mv.version), score=score,
                            aliases=sorted(mv.aliases or []), run_id=mv.run_id or "",
                            source=mv.source or "", created_ms=int(mv.creation_timestamp or 0),
                            tags=dict(mv.tags or {}))


class ModelRegistry:
    """The MLflow Model Registry at `uri` (MLFLOW_REGISTRY_URI when set, else the tracking URI):
    register a run's adaray model, read and move the `champion` alias, list versions.

    Calls raise MLflow's errors: promotion happens once at the end of a sweep, and its caller
    reports a failure instead of losing the sweep's results.
    """

    def __init__(self, uri: str) -> None:
        import mlflow

        set_http_env_defaults()
        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri,
                                          registry_uri=os.environ.get("MLFLOW_REGISTRY_URI"))

    def register(self, name: str, run_id: str, score: float,
                 tags: Mapping[str, Any] | None = None) -> ModelVersionInfo:
        """The run's logged model (`<run artifacts>/model`) as a new version of `name`, tagged
        with its score; a version already registered from this run is returned as it is."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name, description="AdaSFFuse fusion models promoted by adaray sweeps")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        for mv in self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            return _version_info(mv)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        all_tags = {SCORE_TAG: repr(float(score)),
                    **{k: str(v) for k, v in (tags or {}).items()}}
        mv = self.client.create_model_version(name, source, run_id=run_id, tags=all_tags)
        return _version_info(self.client.get_model_version(name, mv.version))

    def alias_version(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version holding `alias`, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return _version_info(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion(self, name: str) -> ModelVersionInfo | None:
        """The version holding the `champion` alias, or None (no model or no champion yet)."""
        return self.alias_version(name, CHAMPION_ALIAS)

    def promote_if_better(self, candidate: ModelVersionInfo) -> tuple[bool, str]:
        """Give `candidate` the champion alias only if its score beats the current champion's.

        Returns (promoted, reason); the reason names both scores.
        """
        current = self.champion(candidate.name)
        if current is not None and current.version == candidate.version:
            return True, f"version {candidate.version} already is the champion"
        if candidate.score is None:
            return False, f"version {candidate.version} has no {SCORE_TAG} tag"
        if current is not None and current.score is not None and candidate.score <= current.score:
            return False, (f"{SCORE_TAG} {candidate.score:.4f} of version {candidate.version} "
                           f"does not beat champion version {current.version} "
                           f"({current.score:.4f}); the alias stays")
        self.client.set_registered_model_alias(candidate.name, CHAMPION_ALIAS,
                                               str(candidate.version))
        if current is None:
            return True, (f"version {candidate.version} ({candidate.score:.4f}) is the first "
                          "champion")
        before = "no score" if current.score is None else f"{current.score:.4f}"
        return True, (f"version {candidate.version} ({candidate.score:.4f}) beats champion "
                      f"version {current.version} ({before})")

    def versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        """Versions of `name`, or of every `adasffuse-*` model, by name then version."""
        if name is not None:
            names = [name]
        else:
            names = [m.name for m in self.client.search_registered_models(
                f"name LIKE '{REGISTERED_MODEL_PREFIX}%'")]
        found = []
        for model_name in names:
            # Search results carry no aliases: the registered model maps alias -> version.
            aliases = self.client.get_registered_model(model_name).aliases or {}
            for mv in self.client.search_model_versions(f"name='{model_name}'"):
                info = _version_info(mv)
                info.aliases = sorted(a for a, v in aliases.items() if int(v) == info.version)
                found.append(info)
        return sorted(found, key=lambda v: (v.name, v.version))


def _registered_version_uri(model_uri: str, tracking_uri: str | None) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> that version's artifact URI.

    Resolved here because mlflow's models:/ download ignores the tracking URI it is given and
    asks the process-wide default registry.
    """
    import mlflow

    ref = parse_model_uri(model_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = ref.version
    if ref.alias is not None:
        version = client.get_model_version_by_alias(ref.name, ref.alias).version
    return client.get_model_version_download_uri(ref.name, version)


def download_model(model_uri: str, dst_path: str, tracking_uri: str | None = None) -> str:
    """Download a logged model's artifacts (`runs:/ID/model`, `models:/NAME@ALIAS`,
    `models:/NAME/VERSION`) into `dst_path`; returns the local path. `tracking_uri` defaults to
    MLflow's own (MLFLOW_TRACKING_URI); the registry is MLFLOW_REGISTRY_URI, else the tracking URI.
    Raises MLflow's errors, ConfigError for a malformed `models:/` URI.
    """
    import mlflow.artifacts

    set_http_env_defaults()
    source = model_uri
    if model_uri.startswith("models:/"):
        source = _registered_version_uri(model_uri, tracking_uri)
    return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst_path,
                                               tracking_uri=tracking_uri)

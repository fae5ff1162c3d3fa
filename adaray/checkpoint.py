"""Model files: plain tensors + config, loadable with `torch.load(weights_only=True)`.

A model file is a dict {"format", "model_config", "state_dict", "meta"}: no pickled classes,
so loading one (from a checkpoint folder, an MLflow artifact or the registry) executes no
code. Train, tune, serve and evaluate all save and load models through this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaray import shipped_path
from adaray.config import from_dict, to_dict
from adaray.errors import ConfigError, InputNotFoundError, ModelFileError
from adaray.model import AdaSFFuse, ModelConfig

MODEL_FORMAT = "adaray.model/1"
MODEL_FILENAME = "model.pt"


def shipped_model(task: str) -> Path | None:
    """The trained model shipped for `task` (models/<task>.pt), or None when there is none."""
    path = shipped_path("models", f"{task}.pt")
    return path if path.is_file() else None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)


def model_payload(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict a model file holds: format tag, ModelConfig as a dict, CPU state dict, meta."""
    net = unwrap(model)
    if not isinstance(net, AdaSFFuse):
        raise TypeError(f"expected an AdaSFFuse model, got {type(net).__name__}")
    return {
        "format": MODEL_FORMAT,
        "model_config": to_dict(net.config),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write a model file (creating parent folders); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model_payload(model, meta), path)
    return path


def model_from_payload(payload: dict[str, Any], source: str = "model") -> AdaSFFuse:
    """Rebuild an AdaSFFuse (in eval mode) from a model-file dict; errors name `source`."""
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelFileError(f"{source}: not an adaray model file (format {found!r}, "
                             f"expected {MODEL_FORMAT!r})")
    try:
        cfg = from_dict(ModelConfig, payload["model_config"])
    except ConfigError as exc:
        raise ModelFileError(f"{source}: bad model_config: {exc}") from None
    model = AdaSFFuse(cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelFileError(f"{source}: weights do not match its model_config: {exc}") from None
    return model.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> AdaSFFuse:
    """Load a model file (or a folder holding model.pt) with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILENAME
    if not path.is_file():
        raise InputNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ModelFileError(f"{path}: cannot load model file ({exc})") from None
    return model_from_payload(payload, source=str(path))

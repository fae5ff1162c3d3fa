"""adaray.tracking against real MLflow: the embedded SQLite store and a real `mlflow server`.

The server tests share one module-scoped server; the outage test stops it and starts it again
on the same store and port, so tests after it still find it running.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import fields
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow_server import MlflowServer, start_mlflow_server

from adaray import tracking
from adaray.config import to_dict
from adaray.data.io import read_image
from adaray.errors import ConfigError
from adaray.loading import load_logged_model
from adaray.model import AdaSFFuse, ModelConfig
from adaray.serving import ServeConfig
from adaray.tracking import Tracker, flatten

LOGGER = "adaray.tracking"


@pytest.fixture(autouse=True)
def _http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pre-set the variables Tracker would setdefault, so each test restores the environment."""
    for name, value in tracking.HTTP_ENV_DEFAULTS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def model() -> AdaSFFuse:
    torch.manual_seed(0)
    return AdaSFFuse(ModelConfig(channels=8, n_hi=1, n_lo=1, n_fuse=1, d_state=8, headdim=8))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded store for the module (creating its tables takes a few seconds)."""
    return tmp_path_factory.mktemp("workdir")


@pytest.fixture
def embedded(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The embedded default tracking URI, with no MLFLOW_TRACKING_URI and a clean cwd."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tracking.tracking_uri(workdir)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> MlflowServer:
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def run_params(model: AdaSFFuse) -> dict:
    return {"model": to_dict(model.config), "train": {"lr": 1e-3, "crop": [64, 64]}, "seed": 7}


def test_uri_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri("wd") == f"sqlite:///{tmp_path.resolve()}/wd/mlflow.db"
    assert tracking.artifact_root("wd") == f"file://{tmp_path.resolve()}/wd/mlartifacts"
    assert tracking.experiment_name("ivf") == "adaray-ivf"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri("wd") == "http://tracking.example:5000"
    assert tracking.artifact_root("wd") is None


@pytest.mark.parametrize(("uri", "expected"), [
    ("models:/adasffuse-ivf@champion",
     tracking.RegisteredModelRef("adasffuse-ivf", alias="champion")),
    ("models:/adasffuse-ivf/3", tracking.RegisteredModelRef("adasffuse-ivf", version="3")),
    ("runs:/0123/model", None),
    ("baseline:laplacian", None),
    ("models/ivf.pt", None),
])
def test_parse_model_uri(uri: str, expected: tracking.RegisteredModelRef | None) -> None:
    assert tracking.parse_model_uri(uri) == expected


@pytest.mark.parametrize("uri", ["models:/adasffuse-ivf", "models:/adasffuse-ivf/latest",
                                 "models:/@champion", "models:/adasffuse-ivf@"])
def test_malformed_model_uris_are_config_errors_naming_them(uri: str) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(uri)}: expected models:/NAME@ALIAS"):
        tracking.parse_model_uri(uri)
    with pytest.raises(ConfigError, match=f"models.ivf: {re.escape(uri)}"):
        ServeConfig(models={"ivf": uri}).validate()


def test_flatten() -> None:
    flat = flatten({"model": {"channels": 64, "wave": {"name": "haar"}}, "crop": [128, 96],
                    "pair": (1, 2), "lr": 0.5, "amp": True, "none": None})
    assert flat == {"model.channels": 64, "model.wave.name": "haar", "crop": "[128, 96]",
                    "pair": "[1, 2]", "lr": 0.5, "amp": True, "none": "None"}


def test_embedded_round_trip(embedded: str, workdir: Path, tmp_path: Path,
                             model: AdaSFFuse) -> None:
    assert embedded == f"sqlite:///{workdir.resolve()}/mlflow.db"
    tracker = Tracker(embedded, "adaray-ivf", tracking.artifact_root(workdir))
    params = run_params(model) | {"note": "x" * 7000}
    run_id = tracker.start_run("ivf-1", params, {"task": "ivf"})
    assert run_id is not None and tracker.run_id == run_id and tracker.healthy
    for step, loss in enumerate([0.9, 0.5, 0.25]):
        tracker.log_metrics({"loss": loss, "lr": 1e-3}, step=step)
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    tracker.log_image(gray, "samples/gray.png")
    tracker.log_image(np.full((8, 8, 3), 0.5, np.float32), "rgb.png")
    assert tracker.log_model(model, {"epoch": 3}) == f"runs:/{run_id}/model"
    tracker.end_run()

    client = mlflow.MlflowClient(embedded)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ivf-1"
    assert run.data.tags["task"] == "ivf"
    assert len(run.data.params) == len(flatten(params)) == len(fields(ModelConfig)) + 4
    assert run.data.params["model.channels"] == "8"
    assert run.data.params["train.crop"] == "[64, 64]"
    assert len(run.data.params["note"]) == 6000
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.25)]
    listed = {f.path for f in client.list_artifacts(run_id, "model")}
    assert listed == {"model/model.pt", "model/model_config.yaml"}
    assert {f.path for f in client.list_artifacts(run_id, "samples")} == {"samples/gray.png"}
    assert (workdir / "mlartifacts" / run_id / "artifacts" / "rgb.png").is_file()
    assert not (tmp_path / "mlruns").exists()

    png = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/samples/gray.png",
                                              dst_path=str(tmp_path / "dl"), tracking_uri=embedded)
    np.testing.assert_array_equal(np.rint(read_image(png) * 255).astype(np.uint8), gray)
    assert_same_weights(load_logged_model(f"runs:/{run_id}/model", embedded), model)

    # The registry serves the same artifacts: models:/NAME@ALIAS and models:/NAME/VERSION.
    client.create_registered_model("adasffuse-ivf")
    version = client.create_model_version("adasffuse-ivf", f"runs:/{run_id}/model", run_id)
    client.set_registered_model_alias("adasffuse-ivf", "champion", version.version)
    for uri in ("models:/adasffuse-ivf@champion", f"models:/adasffuse-ivf/{version.version}"):
        assert_same_weights(load_logged_model(uri, embedded), model)

    with pytest.raises(RuntimeError, match="runs:/0123456789abcdef/model"):
        load_logged_model("runs:/0123456789abcdef/model", embedded)
    with pytest.raises(FileNotFoundError, match=f"runs:/{run_id}/samples: model file not found"):
        load_logged_model(f"runs:/{run_id}/samples", embedded)
    assert not (tmp_path / "mlflow.db").exists()  # nothing fell back to MLflow's ./mlflow.db


def test_resume_nested_and_rejected(embedded: str, workdir: Path, model: AdaSFFuse,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    parent = Tracker(embedded, "adaray-mef", tracking.artifact_root(workdir))
    parent_id = parent.start_run("sweep", {"search": {"trials": 4}}, {})
    tracker = Tracker(embedded, "adaray-mef")
    run_id = tracker.start_run("trial-0", run_params(model), {"trial": 0},
                               parent_run_id=parent_id)
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.end_run("FAILED")  # e.g. the driver died

    resumed = Tracker(embedded, "adaray-mef")
    params = run_params(model)
    params["train"] = {"lr": 5e-4, "crop": [64, 64], "epochs": 10}  # lr changed, epochs new
    assert resumed.start_run("trial-0", params, {"resumed": 1}, run_id=run_id) == run_id
    assert resumed.healthy
    client = mlflow.MlflowClient(embedded)
    assert client.get_run(run_id).info.status == "RUNNING"
    resumed.log_metrics({"loss": 0.5}, step=1)
    resumed.log_metrics({"bad/../name": 1.0}, step=1)  # rejected by MLflow: not an outage
    resumed.log_metrics({"bad/../name": 1.0}, step=2)
    assert resumed.healthy
    resumed.set_tags({"best": 0.5})
    resumed.end_run()
    parent.end_run()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.epochs"] == "10"
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.tags["trial"] == "0" and run.data.tags["resumed"] == "1"
    assert run.data.tags["best"] == "0.5"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "train.lr already logged as '0.001'" in warnings[0]
    assert "rejected log_metrics" in warnings[1]


def test_server_round_trip(server: MlflowServer, tmp_path: Path, model: AdaSFFuse) -> None:
    tracker = Tracker(server.uri, "adaray-mif")
    run_id = tracker.start_run("mif-1", run_params(model), {"task": "mif"})
    assert run_id is not None
    tracker.log_metrics({"loss": 0.75, "ssim": 0.5}, step=0)
    tracker.log_metrics({"loss": 0.5, "ssim": 0.6}, step=1)
    tracker.log_image(np.zeros((8, 8), np.float32), "samples/e0.png")
    assert tracker.log_model(model) == f"runs:/{run_id}/model"
    tracker.end_run()

    client = mlflow.MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server
    assert len(run.data.params) == len(flatten(run_params(model)))
    assert [m.value for m in client.get_metric_history(run_id, "ssim")] == [0.5, 0.6]
    assert {f.path for f in client.list_artifacts(run_id, "model")} == {
        "model/model.pt", "model/model_config.yaml"}
    assert [f.path for f in client.list_artifacts(run_id, "samples")] == ["samples/e0.png"]
    assert_same_weights(load_logged_model(f"runs:/{run_id}/model", server.uri), model)
    client.create_registered_model("adasffuse-mif")
    version = client.create_model_version("adasffuse-mif", f"runs:/{run_id}/model", run_id)
    client.set_registered_model_alias("adasffuse-mif", "champion", version.version)
    assert_same_weights(load_logged_model("models:/adasffuse-mif@champion", server.uri), model)


def test_server_outage_is_survived(server: MlflowServer, model: AdaSFFuse,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tracker = Tracker(server.uri, "adaray-mff", retry_s=2.0, max_retry_s=4.0)
    run_id = tracker.start_run("mff-1", {"lr": 1e-3}, {})
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert run_id is not None and tracker.healthy

    server.stop()
    start = time.monotonic()
    tracker.log_metrics({"loss": 0.9}, step=1)
    tracker.log_image(np.zeros((8, 8), np.float32), "samples/e1.png")
    assert tracker.log_model(model) is None
    tracker.log_metrics({"loss": 0.8}, step=2)
    tracker.set_tags({"epoch": 2})
    assert time.monotonic() - start < 60
    assert not tracker.healthy
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "unavailable" in warnings[0] and "training continues" in warnings[0]

    late = Tracker(server.uri, "adaray-mff", retry_s=2.0)  # a run started during the outage
    assert late.start_run("mff-2", {"lr": 2e-3}, {}) is None and late.run_id is None

    server.start()  # same store, same port
    deadline = time.monotonic() + 30
    while not (tracker.healthy and late.healthy) and time.monotonic() < deadline:
        tracker.log_metrics({"loss": 0.5}, step=3)
        late.log_metrics({"loss": 0.7}, step=0)
        time.sleep(0.2)
    assert tracker.healthy and late.healthy
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("reachable again" in m for m in infos) == 2
    assert tracker.log_model(model) == f"runs:/{run_id}/model"
    tracker.end_run()
    late.end_run()

    client = mlflow.MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (0, 1.0), (3, 0.5)]
    assert_same_weights(load_logged_model(f"runs:/{run_id}/model", server.uri), model)
    late_run = client.get_run(late.run_id)
    assert late_run.data.params == {"lr": "0.002"} and late_run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(late.run_id, "loss")] == [0]

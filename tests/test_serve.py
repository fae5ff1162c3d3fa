"""The Serve app over real HTTP on loopback, on the session's two-node Ray cluster: no mocks.

One module fixture deploys the Serve app (adaray.serving.app) three times: the main app
(route /) serving all four tasks from models made here (ivf from the MLflow registry alias
`champion` in an embedded store, mef and mff from model files, mif from a checkpoint folder),
an app at /nochampion configured to serve a champion alias that has no version (the 503 case),
and an app at /shipped whose task has no champion yet, which serves the shipped models/mif.pt
instead. Tests call them with `requests`, as users do.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
import torch
from conftest import REPO, SAMPLES
from ray_cluster import RayTestCluster, free_port, own_ray_process, ray_processes, wait_for

from adaray import tracking
from adaray.checkpoint import MODEL_FILENAME, save_model
from adaray.data import discover_pairs, read_image
from adaray.fusion import fuse_arrays
from adaray.loading import load_model_from
from adaray.model import AdaSFFuse, ModelConfig
from adaray.runtime import ray_runtime_env

TINY_MODEL = ModelConfig(channels=8, n_hi=1, n_lo=1, n_fuse=1, d_state=8, headdim=8,
                         chunk_size=16)
MAX_PIXELS = 640 * 640
SERVE_TIMEOUT = pytest.mark.timeout(300)


def tiny_model(seed: int) -> AdaSFFuse:
    torch.manual_seed(seed)
    return AdaSFFuse(TINY_MODEL).eval()


def sample_pair(task: str) -> tuple[Path, Path]:
    folder = {"ivf": "IVF", "mef": "MEF", "mff": "MFF", "mif": "MIF"}[task]
    pair = discover_pairs(SAMPLES / folder, task)[0]
    return pair.a_path, pair.b_path


class Served:
    """The deployed apps: base URL, the model source of each task, the work folder."""

    def __init__(self, url: str, sources: dict[str, str], workdir: Path) -> None:
        self.url, self.sources, self.workdir = url, sources, workdir

    def post(self, path: str = "/fuse", **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", timeout=120, **kwargs)

    def fuse(self, task: str, a: Path, b: Path, **params: Any) -> requests.Response:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return self.post(params={"task": task, **params},
                             files={"a": (a.name, fa.read()), "b": (b.name, fb.read())})


@pytest.fixture(scope="module")
def served(ray_cluster: RayTestCluster, tmp_path_factory) -> Any:
    from ray import serve

    from adaray.serving.app import build_application

    root = tmp_path_factory.mktemp("serve")
    workdir = root / "work"
    # ivf: a registered version with the champion alias, in the embedded MLflow store.
    uri = tracking.tracking_uri(workdir)
    tracker = tracking.Tracker(uri, "adaray-ivf", artifact_location=tracking.artifact_root(workdir))
    tracker.start_run("serve-test", {}, {})
    tracker.log_model(tiny_model(1))
    tracker.end_run()
    registry = tracking.ModelRegistry(uri)
    version = registry.register("adasffuse-ivf", tracker.run_id, 0.5)
    assert registry.promote_if_better(version)[0]
    sources = {"ivf": "models:/adasffuse-ivf@champion"}
    for seed, task in enumerate(("mef", "mff"), start=2):
        sources[task] = str(save_model(root / task / MODEL_FILENAME, tiny_model(seed)))
    save_model(root / "checkpoint_000" / MODEL_FILENAME, tiny_model(4))
    sources["mif"] = str(root / "checkpoint_000")  # a checkpoint folder holding model.pt

    args = {"tasks": ["ivf", "mef", "mff", "mif"], "models": {t: s for t, s in sources.items()
                                                             if t != "ivf"},
            "max_pixels": MAX_PIXELS, "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
            "max_models_per_replica": 4, "workdir": str(workdir)}
    small = {"FusionModels": {"num_replicas": 1, "max_ongoing_requests": 32,
                              "health_check_period_s": 2,
                              "ray_actor_options": {"num_cpus": 0.5}},
             "FusionAPI": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}}
    port = free_port()
    with ray_cluster.driver(runtime_env=ray_runtime_env()):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build_application(args, small), name="adaray", route_prefix="/")
            serve.run(build_application({"tasks": ["mif"], "workdir": str(workdir), "models": {
                "mif": "models:/adasffuse-mif@champion"}}, small),
                      name="nochampion", route_prefix="/nochampion")
            serve.run(build_application({"tasks": ["mif"], "workdir": str(workdir)}, small),
                      name="shipped", route_prefix="/shipped")
            yield Served(f"http://127.0.0.1:{port}", sources, workdir)
        finally:
            serve.shutdown()


# ----------------------------------------------------------------------------- round trips


@SERVE_TIMEOUT
@pytest.mark.parametrize("task", ["ivf", "mef", "mff", "mif"])
def test_round_trip_equals_local_fusion(served, task):
    a, b = sample_pair(task)
    response = served.fuse(task, a, b)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-adaray-task"] == task
    assert response.headers["x-adaray-model-source"] == (
        served.sources[task] if task != "ivf" else "models:/adasffuse-ivf@champion")
    if task == "ivf":
        assert response.headers["x-adaray-model-version"] == "1"
    fused = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    source_a, source_b = read_image(a), read_image(b)
    assert fused.shape[:2] == source_a.shape[:2]
    # The same model, loaded and run locally through `adaray fuse`'s path.
    model = load_model_from(served.sources[task], tracking.tracking_uri(served.workdir))
    local = np.rint(np.clip(fuse_arrays(model, source_a, source_b), 0, 1) * 255)
    remote = fused[:, :, ::-1] if fused.ndim == 3 else fused  # OpenCV decodes BGR
    assert remote.shape == local.shape
    assert np.abs(remote.astype(np.int16) - local.astype(np.int16)).max() <= 1


@SERVE_TIMEOUT
def test_json_output_with_metrics_and_the_cli_client(served, tmp_path):
    a, b = sample_pair("mef")
    response = served.fuse("mef", a, b, output="json", metrics="true")
    assert response.status_code == 200, response.text
    body = response.json()
    png = base64.b64decode(body["image_png_base64"])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (body["height"], body["width"]) == image.shape[:2] == read_image(a).shape[:2]
    assert body["model"]["source"] == served.sources["mef"]
    assert {"Qabf", "VIF", "SSIM", "EN", "SF"} <= set(body["metrics"])
    assert all(np.isfinite(v) for v in body["metrics"].values())

    import subprocess

    out = tmp_path / "cli.png"
    run = subprocess.run([str(Path(sys.executable).parent / "adaray"), "fuse", str(a), str(b),
                          "-o", str(out), "--task", "mef", "--url", served.url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == served.fuse("mef", a, b).content


@SERVE_TIMEOUT
def test_models_and_health_endpoints(served):
    health = requests.get(f"{served.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    served.fuse("ivf", *sample_pair("ivf"))  # loaded now
    models = requests.get(f"{served.url}/models", timeout=30).json()["models"]
    assert set(models) == {"ivf", "mef", "mff", "mif"}
    assert models["ivf"]["loaded"] and models["ivf"]["version"] == 1
    assert models["ivf"]["score"] == 0.5
    docs = requests.get(f"{served.url}/openapi.json", timeout=30).json()
    assert {"/fuse", "/healthz", "/models"} <= set(docs["paths"])


@SERVE_TIMEOUT
def test_a_task_without_champion_serves_its_shipped_model(served):
    from adaray.checkpoint import load_model, shipped_model

    shipped = shipped_model("mif")
    before = requests.get(f"{served.url}/shipped/models", timeout=30).json()["models"]["mif"]
    assert before == {"source": str(shipped), "loaded": False, "version": None, "score": None,
                      "instead_of": "models:/adasffuse-mif@champion"}
    a, b = sample_pair("mif")
    response = requests.post(f"{served.url}/shipped/fuse", params={"task": "mif"},
                             files={"a": ("a.png", a.read_bytes()),
                                    "b": ("b.png", b.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-adaray-model-source"] == str(shipped)
    fused = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    local = np.rint(fuse_arrays(load_model(shipped), read_image(a), read_image(b)) * 255)
    remote = fused[:, :, ::-1] if fused.ndim == 3 else fused  # OpenCV decodes BGR
    assert remote.shape == local.shape
    assert np.abs(remote.astype(np.int16) - local.astype(np.int16)).max() <= 1
    after = requests.get(f"{served.url}/shipped/models", timeout=30).json()["models"]["mif"]
    assert after["loaded"] and after["source"] == str(shipped)
    assert after["instead_of"] == "models:/adasffuse-mif@champion"


# ----------------------------------------------------------------------------- bad requests


def _png_bytes(shape: tuple[int, ...], dtype: Any = np.uint8, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, np.full(shape, 100, dtype))
    assert ok
    return data.tobytes()


def _bad_requests(served: Served) -> list[tuple[str, Any, int, str]]:
    """(what, a call returning the response, expected status, expected words in the reason)."""
    a_path, b_path = sample_pair("ivf")
    a, b = a_path.read_bytes(), b_path.read_bytes()
    height, width = read_image(a_path).shape[:2]
    other = _png_bytes((height + 2, width))
    big = _png_bytes((700, 700))
    fuse = f"{served.url}/fuse"

    def post(files: Any = None, params: Any = None, **kwargs: Any) -> Any:
        return lambda: requests.post(fuse, files=files, params={"task": "ivf", **(params or {})},
                                     timeout=60, **kwargs)

    return [
        ("undecodable a", post({"a": ("a.png", b"not an image"), "b": ("b.png", b)}), 422,
         "part 'a' (a.png): not a readable image"),
        ("undecodable b", post({"a": ("a.png", a), "b": ("b.txt", b"\x00\x01garbage")}), 422,
         "part 'b' (b.txt): not a readable image"),
        ("empty a", post({"a": ("a.png", b""), "b": ("b.png", b)}), 422, "empty file"),
        ("missing b", post({"a": ("a.png", a)}), 422, "missing part 'b'"),
        ("missing a", post({"b": ("b.png", b)}), 422, "missing part 'a'"),
        ("no parts", post(None, data={"task": "ivf"}, headers={
            "content-type": "multipart/form-data; boundary=x"}), 422, ""),
        ("sizes differ", post({"a": ("a.png", a), "b": ("b.png", other)}), 422,
         f"a is {width}x{height}, b is {width}x{height + 2}"),
        ("too many pixels", post({"a": ("a.png", big), "b": ("b.png", big)}), 413,
         f"700x700 is 490000 pixels, above the limit of {MAX_PIXELS}"),
        ("unknown task", post({"a": ("a.png", a), "b": ("b.png", b)}, {"task": "xyz"}), 404,
         "task 'xyz' is not served here (served: ivf, mef, mff, mif)"),
        ("no task", lambda: requests.post(fuse, files={"a": ("a.png", a), "b": ("b.png", b)},
                                          timeout=60), 422, "missing 'task'"),
        ("no champion", lambda: requests.post(
            f"{served.url}/nochampion/fuse", params={"task": "mif"},
            files={"a": ("a.png", a), "b": ("b.png", b)}, timeout=60), 503,
         "registered model adasffuse-mif has no version with alias 'champion'"),
        ("json body", post(None, json={"a": "x"}), 415, "expected multipart/form-data"),
        ("raw body", post(None, data=b"\x89PNG", headers={"content-type": "image/png"}), 415,
         "got content type 'image/png'"),
        ("unknown output", post({"a": ("a.png", a), "b": ("b.png", b)}, {"output": "xml"}), 422,
         "output must be one of png, json"),
        ("text instead of file", post({"a": ("a.png", a)}, data={"b": "hello"}), 422,
         "part 'b' must be a file upload"),
        ("truncated png", post({"a": ("a.png", a[: len(a) // 2]), "b": ("b.png", b)}), 422,
         "truncated PNG"),
        ("truncated jpeg", post({"a": ("a.jpg", _png_bytes((64, 64), ext=".jpg")[:300]),
                                 "b": ("b.png", b)}), 422, "truncated JPEG"),
        ("1x1 image", post({"a": ("a.png", _png_bytes((1, 1))),
                            "b": ("b.png", _png_bytes((1, 1)))}), 422, "too small"),
        ("float tiff", post({"a": ("a.tif", _png_bytes((8, 8), np.float32, ".tiff")),
                             "b": ("b.png", _png_bytes((8, 8)))}), 422,
         "unsupported sample type float32"),
        ("bad metrics flag", post({"a": ("a.png", a), "b": ("b.png", b)},
                                  {"metrics": "maybe"}), 422, "metrics"),
        ("malformed multipart", post(None, data=b"--zz\r\ngarbage", headers={
            "content-type": "multipart/form-data"}), 422, ""),
        ("GET /fuse", lambda: requests.get(fuse, timeout=60), 405, "Method Not Allowed"),
        ("unknown path", lambda: requests.post(f"{served.url}/fusion", timeout=60), 404,
         "Not Found"),
    ]


@SERVE_TIMEOUT
def test_bad_requests_get_json_errors_and_the_app_stays_healthy(served):
    cases = _bad_requests(served)
    assert len(cases) >= 20
    seen = []
    for what, call, status, words in cases:
        response = call()
        assert response.status_code == status, (what, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error"} and body["error"], (what, body)
        assert words in body["error"], (what, body)
        seen.append(f"{what}: {status}")
    print("\nbad requests: " + "; ".join(seen))
    assert requests.get(f"{served.url}/healthz", timeout=30).status_code == 200
    assert served.fuse("ivf", *sample_pair("ivf")).status_code == 200


# ----------------------------------------------------------------------------- load, recovery


@SERVE_TIMEOUT
def test_concurrent_requests_are_batched(served):
    a, b = sample_pair("mff")
    files = {"a": (a.name, a.read_bytes()), "b": (b.name, b.read_bytes())}

    def call(_: int) -> tuple[int, int]:
        response = requests.post(f"{served.url}/fuse", params={"task": "mff"}, files=files,
                                 timeout=120)
        return response.status_code, int(response.headers.get("x-adaray-batch-size", 0))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(64)))
    wall = time.monotonic() - started
    assert [s for s, _ in results].count(200) == 64
    sizes = [size for _, size in results]
    assert max(sizes) > 1, sizes
    print(f"\n64 requests at concurrency 16: {wall:.1f} s, batch sizes seen "
          f"{sorted(set(sizes))}")


@SERVE_TIMEOUT
def test_killed_model_replica_is_restarted(served, ray_cluster):
    a, b = sample_pair("ivf")
    assert served.fuse("ivf", a, b).status_code == 200
    replicas = ray_cluster.live_actors("ServeReplica:adaray:FusionModels")
    assert len(replicas) == 1
    killed_at = time.monotonic()
    os.kill(replicas[0]["pid"], signal.SIGKILL)

    def recovered() -> bool:
        try:
            return served.fuse("ivf", a, b).status_code == 200
        except requests.RequestException:
            return False

    wait_for(recovered, 30, interval=0.5, what="a successful request after the replica kill")
    after = ray_cluster.live_actors("ServeReplica:adaray:FusionModels")
    assert [r["pid"] for r in after] != [replicas[0]["pid"]]
    print(f"\nmodel replica killed; requests succeed again after "
          f"{time.monotonic() - killed_at:.1f} s")


# ----------------------------------------------------------------------------- adaray serve


@pytest.mark.slow  # starts its own Ray
@pytest.mark.timeout(240)
@pytest.mark.parametrize("launcher", ["adaray serve", "serve run"])
def test_config_file_app_runs_on_its_own_ray_and_stops_cleanly_on_sigterm(launcher, tmp_path):
    """`adaray serve --config` and Ray's `serve run CONFIG`, started outside the checkout (the
    app's import_path points into the installed package), both serve serve/config.yaml's app
    and stop their Ray on SIGTERM."""
    import yaml

    model = save_model(tmp_path / "model.pt", tiny_model(5))
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    app = config["applications"][0]
    app["args"].update(tasks=["mif"], models={"mif": str(model)}, workdir=str(tmp_path / "w"))
    app["deployments"] = [{"name": "FusionModels", "num_replicas": 1,
                           "ray_actor_options": {"num_cpus": 0.5}},
                          {"name": "FusionAPI", "num_replicas": 1,
                           "ray_actor_options": {"num_cpus": 0.1}}]
    port = free_port()
    config["http_options"]["port"] = port
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    command = ([str(Path(sys.executable).parent / "adaray"), "serve", "--config", str(path)]
               if launcher == "adaray serve" else
               [str(Path(sys.executable).parent / "serve"), "run", str(path)])
    log = tmp_path / "serve.log"
    with own_ray_process(command, log, "adaray-sv-", cwd=tmp_path) as (process, ray_tmp):
        def healthy() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
            except requests.RequestException:
                return False

        wait_for(healthy, 150, interval=1.0, what="adaray serve to answer /healthz")
        a, b = sample_pair("mif")
        served = Served(f"http://127.0.0.1:{port}", {"mif": str(model)}, tmp_path / "w")
        assert served.fuse("mif", a, b).status_code == 200
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
        if launcher == "adaray serve":
            assert code == 0, log.read_text()[-3000:]
            assert "adaray serve: shutting down" in log.read_text()
        wait_for(lambda: not ray_processes(ray_tmp), 30,
                 what="the Ray processes of adaray serve to exit")

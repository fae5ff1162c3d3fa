"""Pair sources by URI: a local folder, an object-store prefix (a real S3 API, moto_server on
loopback) and manifests (CSV, Parquet) give the same pairs, the same split and the same errors,
each naming the object or the manifest row. On the session's two-node cluster: DDP training
fed by Ray Data from the bucket with checkpoints there, a local folder read on its node only,
a sweep stored in the bucket and tracked by an MLflow server whose artifacts are in the bucket,
its champion served and evaluated from there, and a corrupt object named by the CLI."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pyarrow
import pyarrow.fs
import pyarrow.parquet
import pytest
import ray
from conftest import REPO, S3_BUCKET, S3_SAMPLES, SAMPLES
from mlflow_server import start_mlflow_server
from ray_cluster import free_port
from s3_server import S3Server

from adaray import tracking
from adaray.checkpoint import MODEL_FILENAME
from adaray.config import to_dict
from adaray.data import PairError, check_pairs, discover_pairs, read_image, read_pair, split_pairs
from adaray.data.dataset import DataConfig
from adaray.data.ingest import PAIRS_PER_BLOCK, block_count, fetched_ahead
from adaray.data.location import Location
from adaray.errors import DataError
from adaray.evaluate import evaluate_models
from adaray.fusion import fuse_arrays
from adaray.loading import load_model_from
from adaray.runtime import ray_runtime_env
from adaray.serving.client import post_fuse
from adaray.train import build_trainer, load_config
from adaray.tune import parse_space, run_sweep

TASKS = ("ivf", "mef", "mff", "mif")
BUCKET, PREFIX = S3_BUCKET, S3_SAMPLES
TINY = REPO / "configs" / "tiny.yaml"
SMALL_SERVE = {"FusionModels": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}},
               "FusionAPI": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}}


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The session's S3 server (conftest.py): bucket `fusion`, the samples under `samples/`."""
    return s3_server


def _names(pairs) -> list[tuple[str, str, str, str]]:
    return [(p.group, p.stem, p.a_path.name, p.b_path.name) for p in pairs]


@pytest.mark.parametrize("task", TASKS)
def test_a_prefix_in_object_storage_pairs_and_splits_as_the_folder_does(s3, task):
    local, remote = discover_pairs(SAMPLES, task), discover_pairs(PREFIX, task)
    assert _names(remote) == _names(local) and remote
    assert all(str(p.a_path).startswith(f"{PREFIX}/") for p in remote)
    assert [_names(part) for part in split_pairs(remote, 0.3)] == [
        _names(part) for part in split_pairs(local, 0.3)]
    a_local, b_local = read_pair(local[0])
    a_remote, b_remote = read_pair(remote[0])
    assert np.array_equal(a_local, a_remote) and np.array_equal(b_local, b_remote)


def test_explicit_a_and_b_folders_under_a_prefix(s3):
    pairs = discover_pairs(f"{PREFIX}/IVF", "ivf", a_dir="infrared", b_dir="visible")
    assert _names(pairs) == _names(discover_pairs(SAMPLES / "IVF", "ivf", a_dir="infrared",
                                                  b_dir="visible"))


def _manifest_rows(pairs, root: str) -> list[dict[str, str]]:
    """Rows of a manifest naming `pairs` relative to `root` (a local folder or a prefix)."""
    return [{"a": str(p.a_path).removeprefix(root + "/"),
             "b": str(p.b_path).removeprefix(root + "/"), "group": p.group} for p in pairs]


def _csv(rows: list[dict[str, str]]) -> bytes:
    lines = ["a,b,group", *(f"{r['a']},{r['b']},{r['group']}" for r in rows)]
    return ("\n".join(lines) + "\n").encode()


def test_manifests_in_a_folder_or_a_bucket_list_the_same_pairs(s3, tmp_path):
    folder_pairs = discover_pairs(SAMPLES, "mif")
    rows = _manifest_rows(folder_pairs, str(SAMPLES))
    # A CSV manifest in the bucket, naming objects relative to itself.
    s3.put(f"{PREFIX}/mif.csv", _csv(rows))
    from_bucket = discover_pairs(f"{PREFIX}/mif.csv", "mif")
    assert _names(from_bucket) == _names(folder_pairs)
    assert str(from_bucket[0].a_path).startswith(f"{PREFIX}/")
    # A local Parquet manifest naming the objects by URI; without `group` the group is the
    # folder above A's folder, as for folders.
    table = pyarrow.table({"a": [f"{PREFIX}/{r['a']}" for r in rows],
                           "b": [f"{PREFIX}/{r['b']}" for r in rows]})
    pyarrow.parquet.write_table(table, tmp_path / "mif.parquet")
    by_uri = discover_pairs(tmp_path / "mif.parquet", "mif")
    assert _names(by_uri) == _names(folder_pairs)
    # A local CSV manifest of local files.
    (tmp_path / "local.csv").write_bytes(_csv(_manifest_rows(folder_pairs, str(SAMPLES))))
    (tmp_path / "MIF").symlink_to(SAMPLES / "MIF")
    (tmp_path / "MIF-PET").symlink_to(SAMPLES / "MIF-PET")
    assert _names(discover_pairs(tmp_path / "local.csv", "mif")) == _names(folder_pairs)


def test_bad_sources_fail_naming_the_bucket_object_or_row(s3, tmp_path):
    with pytest.raises(PairError, match=r"data folder s3://no-such-bucket/x does not exist"):
        discover_pairs("s3://no-such-bucket/x", "ivf")
    with pytest.raises(PairError, match=rf"data folder {PREFIX}/nothing-here does not exist"):
        discover_pairs(f"{PREFIX}/nothing-here", "ivf")

    # An image without a partner, as for a folder.
    ivf = discover_pairs(PREFIX, "ivf")
    copy = f"s3://{BUCKET}/unmatched/IVF"
    for pair in ivf:
        s3.put(f"{copy}/infrared/{pair.a_path.name}", pair.a_path.read_bytes())
        s3.put(f"{copy}/visible/{pair.b_path.name}", pair.b_path.read_bytes())
    s3.put(f"{copy}/infrared/extra.png", ivf[0].a_path.read_bytes())
    with pytest.raises(PairError, match=rf"1 image\(s\) in {copy}/infrared have no partner in "
                                        rf"{copy}/visible: extra"):
        discover_pairs(f"s3://{BUCKET}/unmatched", "ivf")

    # A corrupt object: the check before training names it.
    broken = f"s3://{BUCKET}/broken/IVF"
    for pair in ivf:
        s3.put(f"{broken}/infrared/{pair.a_path.name}", pair.a_path.read_bytes())
        s3.put(f"{broken}/visible/{pair.b_path.name}", pair.b_path.read_bytes())
    s3.put(f"{broken}/visible/{ivf[1].b_path.name}", b"not an image")
    with pytest.raises(PairError, match=rf"1 of {len(ivf)} pairs are unusable:\n  "
                                        rf"{broken}/visible/{ivf[1].b_path.name}: not a "
                                        "readable image"):
        check_pairs(discover_pairs(f"s3://{BUCKET}/broken", "ivf"))
    with pytest.raises(Exception, match=rf"{PREFIX}/IVF/visible/gone.png: cannot read file"):
        read_image(f"{PREFIX}/IVF/visible/gone.png")

    # A manifest naming a missing object: the row and the URI.
    rows = _manifest_rows(ivf, PREFIX)
    rows[1]["b"] = "IVF/visible/gone.png"
    s3.put(f"{PREFIX}/bad.csv", _csv(rows))
    with pytest.raises(PairError, match=rf"names 1 missing file\(s\): row 3: "
                                        rf"{PREFIX}/IVF/visible/gone.png"):
        discover_pairs(f"{PREFIX}/bad.csv", "ivf")
    (tmp_path / "columns.csv").write_text("left,right\nx.png,y.png\n")
    with pytest.raises(PairError, match=r"columns.csv: no column 'a' \(needs a, b"):
        discover_pairs(tmp_path / "columns.csv", "ivf")
    with pytest.raises(PairError, match="is a manifest: it pairs its files itself"):
        discover_pairs(tmp_path / "columns.csv", "ivf", a_dir="x", b_dir="y")


def test_locations_name_local_paths_and_uris_alike(tmp_path):
    local = Location.of(tmp_path / "a" / ".." / "b.png")
    assert str(local) == str(tmp_path / "b.png") and local.is_local
    assert Path(local) == tmp_path / "b.png"  # a local Location is a path
    remote = Location.of("s3://bucket/x/y.png/")
    assert (str(remote), remote.name, remote.stem, str(remote.parent)) == (
        "s3://bucket/x/y.png", "y.png", "y", "s3://bucket/x")
    assert str(remote.parent / "z" / "w.jpg") == "s3://bucket/x/z/w.jpg"
    assert str(remote.parent / "s3://other/k") == "s3://other/k"
    with pytest.raises(TypeError, match="not a local path"):
        Path(remote)


@pytest.mark.parametrize(("pairs", "tasks", "blocks"), [
    (1, 2, 1), (3, 2, 3), (20, 2, 8), (151, 2, 19), (151, 8, 32), (1000, 2, 125)])
def test_blocks_hold_at_most_8_pairs_and_keep_each_ingest_task_busy(pairs, tasks, blocks):
    cfg = DataConfig(ingest_tasks=tasks)
    assert block_count(pairs, cfg) == blocks
    assert math.ceil(pairs / blocks) <= PAIRS_PER_BLOCK or blocks == 4 * tasks


def test_fetched_ahead_takes_the_first_item_before_it_is_asked_for():
    taken = threading.Event()

    def items():
        taken.set()
        yield from range(3)

    ahead = fetched_ahead(items())
    assert taken.wait(10)  # without a `next` from this thread
    assert list(ahead) == [0, 1, 2]

    def broken():
        raise DataError("s3://fusion/x.png: not an image")
        yield

    failing = fetched_ahead(broken())
    with pytest.raises(DataError, match=r"s3://fusion/x\.png"):  # raised where consumed
        next(failing)
    assert list(fetched_ahead(iter(()))) == []


# ----------------------------------------------------------------------------- on the cluster


def _train_config(tmp_path: Path, name: str, data: str | Path, storage: str, *overrides: str):
    return load_config(TINY, ["task=ivf", f"run.data={data}", f"run.name={name}",
                              f"run.storage={storage}", f"run.workdir={tmp_path / 'work'}",
                              "log_every=5", "val_every=10", "ckpt_every=10", *overrides])


def _checkpoints(s3: S3Server, run_path: str) -> list[str]:
    infos = s3.filesystem().get_file_info(pyarrow.fs.FileSelector(run_path, allow_not_found=True))
    return sorted(info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory
                  and info.base_name.startswith("checkpoint_"))


@pytest.mark.timeout(600)
def test_ddp_reads_only_from_s3_checkpoints_there_and_resumes(ray_cluster, s3, tmp_path):
    """Two DDP workers, one per node (SPREAD), fed by Ray Data from the bucket, checkpoints
    in the bucket; the same run with more steps continues from the bucket's checkpoint."""
    storage = f"s3://{BUCKET}/runs"
    cfg, run = _train_config(tmp_path, "ddp-s3", PREFIX, storage, "max_steps=10",
                             "run.workers=2", "run.placement_strategy=SPREAD")
    with ray_cluster.driver():
        first = build_trainer(cfg, run).fit()
    assert first.error is None and first.metrics["step"] == 10
    assert _checkpoints(s3, f"{BUCKET}/runs/ddp-s3")
    with ray_cluster.driver():
        second = build_trainer(dataclasses.replace(cfg, max_steps=20), run).fit()
    assert second.error is None and second.metrics["step"] == 20
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(run.workdir))
    experiment = client.get_experiment_by_name(tracking.experiment_name("ivf"))
    mlflow_run = client.search_runs([experiment.experiment_id],
                                    filter_string="tags.run_name = 'ddp-s3'")[0]
    steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")]
    assert steps == [5, 10, 15, 20], steps  # the rerun continued after step 10
    assert len(mlflow_run.data.tags["ray_nodes"].split(",")) == 2
    assert mlflow_run.data.tags["ray_nodes"].split(",")[0] != \
        mlflow_run.data.tags["ray_nodes"].split(",")[1]


@pytest.mark.timeout(600)
def test_a_local_folder_is_read_on_its_node_while_a_worker_trains_on_the_other(ray_cluster,
                                                                             tmp_path):
    """The data folder is on the driver's node: the Ray Data tasks that read it run there, and
    a worker on the other node trains on what they send (it never opens the folder)."""
    from ray.util.state import list_tasks

    cfg, run = _train_config(tmp_path, "local-spread", SAMPLES, str(tmp_path / "runs"),
                             "max_steps=10", "run.workers=2", "run.placement_strategy=SPREAD")
    with ray_cluster.driver():
        driver_node = ray.get_runtime_context().get_node_id()
        result = build_trainer(cfg, run).fit()
        readers = list_tasks(limit=10000, detail=True, filters=[
            ("job_id", "=", ray.get_runtime_context().get_job_id())])
    assert result.error is None and result.metrics["step"] == 10
    read_nodes = {task.node_id for task in readers if "decode_pairs" in task.name}
    assert read_nodes == {driver_node}, read_nodes
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(run.workdir))
    experiment = client.get_experiment_by_name(tracking.experiment_name("ivf"))
    nodes = client.search_runs([experiment.experiment_id],
                               filter_string="tags.run_name = 'local-spread'")[0].data.tags[
        "ray_nodes"].split(",")
    assert len(set(nodes)) == 2 and driver_node in nodes  # a worker on each node


def _objects(s3: S3Server, prefix: str) -> list[str]:
    """Every object key under `prefix` (bucket/key...), folders walked."""
    infos = s3.filesystem().get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True,
                                                                   allow_not_found=True))
    return sorted(info.path for info in infos if info.type == pyarrow.fs.FileType.File)


@pytest.mark.timeout(600)
def test_sweep_and_mlflow_artifacts_in_s3_serve_and_evaluate_the_champion(ray_cluster, s3,
                                                                          tmp_path, monkeypatch):
    """A sweep on S3 data with its trials stored in the bucket, tracked by an MLflow server
    whose artifacts go to the bucket (`--artifacts-destination s3://...`): the champion's model
    file lands there; Serve loads `models:/adasffuse-ivf@champion` through the server and fuses
    over HTTP what the local model fuses; evaluate reads the pairs and the champion from S3."""
    from ray import serve

    from adaray.serving.app import build_application

    server = start_mlflow_server(tmp_path / "mlflow", artifacts_destination=f"s3://{BUCKET}/mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    try:
        base, run = _train_config(tmp_path, "unused", PREFIX, str(tmp_path / "runs"))
        space = parse_space({"sweep": {"num_samples": 1, "max_concurrent": 1, "grace_period": 10,
                                       "max_steps": 10, "reduction_factor": 2, "seed": 0},
                             "params": {"optim.lr": {"type": "loguniform", "low": 1e-3,
                                                     "high": 5e-3}}}, to_dict(base))
        with ray_cluster.driver():
            result = run_sweep(base, dataclasses.replace(run, name=None), space,
                               name="s3-sweep", storage=f"s3://{BUCKET}/tune")
        assert result.best is not None and len(result.outcomes) == 1 and result.promoted
        assert s3.filesystem().get_file_info(f"{BUCKET}/tune/s3-sweep/adaray_sweep.yaml"
                                             ).type == pyarrow.fs.FileType.File
        assert len(_checkpoints(s3, f"{BUCKET}/tune/s3-sweep/train/"
                                    f"{result.best.trial_id}")) >= 1

        # The champion's files are in the bucket, and nowhere on this machine's disk.
        champion = tracking.ModelRegistry(server.uri).champion("adasffuse-ivf")
        artifacts = _objects(s3, f"{BUCKET}/mlflow")
        assert any(key.endswith(f"/{champion.run_id}/artifacts/model/{MODEL_FILENAME}")
                   for key in artifacts), artifacts
        assert not (server.root / "mlartifacts").exists()

        # Serve: the champion, downloaded through the server from the bucket, over HTTP.
        source = "models:/adasffuse-ivf@champion"
        pair = discover_pairs(SAMPLES, "ivf")[0]
        port = free_port()
        with ray_cluster.driver(runtime_env=ray_runtime_env({"MLFLOW_TRACKING_URI": server.uri})):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            try:
                serve.run(build_application({"tasks": ["ivf"], "models": {"ivf": source},
                                             "workdir": str(tmp_path / "work")}, SMALL_SERVE),
                          name="s3-champion", route_prefix="/")
                body, headers = post_fuse(f"http://127.0.0.1:{port}", pair.a_path,
                                          pair.b_path, "ivf", route_wait_s=30)
            finally:
                serve.shutdown()
        headers = {key.lower(): value for key, value in headers.items()}
        assert headers["x-adaray-model-version"] == str(champion.version)
        served = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        a, b = read_pair(pair)
        local = np.rint(np.clip(fuse_arrays(load_model_from(source, server.uri), a, b), 0, 1)
                        * 255)
        served = served[:, :, ::-1] if served.ndim == 3 else served  # OpenCV decodes BGR
        assert np.abs(served.astype(np.int16) - local.astype(np.int16)).max() <= 1

        with ray_cluster.driver():
            evaluation = evaluate_models("ivf", PREFIX, ["baseline:average", source],
                                         tmp_path / "report", metrics=["Qabf", "SSIM"],
                                         workdir=tmp_path / "work")
    finally:
        server.stop()
    assert len(evaluation.rows) == 2 * len(discover_pairs(SAMPLES, "ivf"))
    summary = (evaluation.out / "summary.md").read_text()
    assert "| average |" in summary and "adasffuse-ivf@champion" in summary, summary


@pytest.mark.timeout(300)
def test_training_on_a_corrupt_object_fails_naming_it(ray_cluster, s3, tmp_path):
    broken = f"s3://{BUCKET}/corrupt/IVF"
    for pair in discover_pairs(PREFIX, "ivf"):
        s3.put(f"{broken}/infrared/{pair.a_path.name}", pair.a_path.read_bytes())
        s3.put(f"{broken}/visible/{pair.b_path.name}", pair.b_path.read_bytes())
    bad = f"{broken}/visible/{pair.b_path.name}"
    s3.put(bad, b"\x89PNG truncated")
    done = subprocess.run([str(Path(sys.executable).parent / "adaray"), "train", "--task", "ivf",
                           "--data", f"s3://{BUCKET}/corrupt", "--config", str(TINY),
                           "--max-steps", "4", "--set", f"run.workdir={tmp_path / 'work'}"],
                          capture_output=True, text=True, env=ray_cluster.env(), timeout=240,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert f"adaray train: training failed: {bad}: " in done.stderr, done.stderr[-3000:]

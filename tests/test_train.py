"""Training on a real Ray cluster, tracked in real MLflow stores: no mocks of Ray or MLflow.

Every Ray test shares the session's two-node cluster (`ray_cluster`, tests/ray_cluster.py) and
runs the tiny config (configs/tiny.yaml) with its own work folder and checkpoint storage. The
2-worker DDP test uses the real IVF pairs (RoadScene) where ../shared/data is present, else the
bundled samples (it passes on both, so it carries no shared_data marker). The bad-config tests
never start Ray. The worker-kill test prints the recovery time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, SAMPLES, SHARED_DATA
from mlflow_server import all_artifacts, start_mlflow_server
from ray_cluster import latest_checkpoint_step, process_alive, wait_for

from adaray import tracking
from adaray.checkpoint import MODEL_FILENAME, load_model
from adaray.config import to_dict
from adaray.loading import load_logged_model
from adaray.model import AdaSFFuse
from adaray.train import STATE_FILENAME, RunSettings, TrainConfig, build_trainer, load_config

TINY = REPO / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
PROGRESS = re.compile(r"\[adaray train\] step (\d+)/(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_TIMEOUT = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ivf_data() -> Path:
    """Real IVF pairs (RoadScene, 151 train / 2 val with the tiny config), else the samples."""
    real = SHARED_DATA / "IVF"
    return real if real.is_dir() else SAMPLES


def tiny_config(tmp_path: Path, name: str, *overrides: str,
                data: Path = SAMPLES) -> tuple[TrainConfig, RunSettings]:
    """The tiny config for task ivf on `data`, working in tmp_path (MLflow store, storage)."""
    return load_config(TINY, ["task=ivf", f"run.data={data}", f"run.name={name}",
                              f"run.workdir={tmp_path / 'work'}",
                              f"run.storage={tmp_path / 'runs'}", *overrides])


def mlflow_client(run: RunSettings) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(run.workdir))


def find_run(client: Any, cfg: TrainConfig, run: RunSettings) -> Any:
    """The one MLflow run of `run.name` (the Tracker tags it run_name)."""
    experiment = client.get_experiment_by_name(tracking.experiment_name(cfg.task))
    assert experiment is not None, "the training run created no MLflow experiment"
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.run_name = '{run.name}'")
    assert len(runs) == 1, f"expected one MLflow run named {run.name}, found {len(runs)}"
    return runs[0]


def history(client: Any, run_id: str, key: str) -> list[Any]:
    """A metric's history in logging order (time, then step: reruns log a step twice)."""
    return sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))


def run_dir(run: RunSettings) -> Path:
    return Path(run.storage) / run.name


# ----------------------------------------------------------------------------- DDP, SPREAD


@RAY_TIMEOUT
def test_ddp_two_workers_real_pairs(ray_cluster, ivf_data, tmp_path):
    cfg, settings = tiny_config(tmp_path, "ddp", "run.workers=2", "max_steps=40",
                                "log_every=2", "val_every=20", "ckpt_every=20", data=ivf_data)
    with ray_cluster.driver():
        result = build_trainer(cfg, settings).fit()

    # Completed, replicas identical: replica_divergence is max |param - rank 0's param| over
    # all ranks (broadcast + all_reduce), computed by both ranks at every checkpoint.
    assert result.error is None
    assert result.metrics["step"] == 40
    assert [m["step"] for _, m in sorted(result.best_checkpoints, key=lambda c: c[1]["step"])
            ] == [20, 40]
    assert all(m["replica_divergence"] == 0.0 for _, m in result.best_checkpoints)

    # The checkpoint: plain tensors, loadable without unpickling code.
    folder = Path(result.checkpoint.path)
    state = torch.load(folder / STATE_FILENAME, weights_only=True)
    assert state["step"] == 40 and state["mlflow_run_id"]
    assert {"model", "optimizer", "scheduler", "rng", "config", "best_score"} <= set(state)
    # The hyperparameters only: no run settings, no paths of this machine.
    assert state["config"] == to_dict(cfg) and str(tmp_path) not in str(state["config"])
    payload = torch.load(folder / MODEL_FILENAME, weights_only=True)
    model = load_model(folder)
    assert isinstance(model, AdaSFFuse) and not model.training
    for key, value in payload["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value)
        assert torch.equal(state["model"]["state_dict"][key], value)
    with torch.inference_mode():
        fused = model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert fused.shape == (1, 1, 32, 32) and torch.isfinite(fused).all()

    # MLflow: one finished run with params, tags, metrics, validation grids and the model.
    client = mlflow_client(settings)
    run = find_run(client, cfg, settings)
    assert run.info.run_id == state["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == "40" and run.data.params["run.workers"] == "2"
    assert run.data.tags["world_size"] == "2" and run.data.tags["task"] == "ivf"
    assert len(run.data.tags["ray_nodes"].split(",")) == 2
    assert {"loss", "lr", "samples_per_s", "val_score", "replica_divergence"} <= set(
        run.data.metrics)
    assert run.data.metrics["replica_divergence"] == 0.0
    artifacts = all_artifacts(client, run.info.run_id)
    assert {"val/step_0000020.png", "val/step_0000040.png", "model/model.pt",
            "model/model_config.yaml"} <= set(artifacts)
    logged = load_logged_model(f"runs:/{run.info.run_id}/model",
                               tracking.tracking_uri(settings.workdir))
    assert all(torch.equal(logged.state_dict()[k], v) for k, v in payload["state_dict"].items())

    # Learning: loss at the end below loss at the start (means of the first and last quarter
    # of the 20 logged values; each is one rank-0 batch of random patches, hence the means).
    losses = [m.value for m in history(client, run.info.run_id, "loss")]
    assert [m.step for m in history(client, run.info.run_id, "loss")] == list(range(2, 41, 2))
    quarter = len(losses) // 4
    start, end = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert end < start, f"loss did not fall: {losses}"
    print(f"\nDDP 2 workers on {ivf_data}: loss {start:.2f} -> {end:.2f}; MLflow run: "
          f"{len(run.data.params)} params, {len(run.data.metrics)} metrics "
          f"({len(losses)} loss values), {len(run.data.tags)} tags, "
          f"{len(artifacts)} artifacts {sorted(artifacts)}")


@RAY_TIMEOUT
def test_spread_places_workers_on_two_nodes(ray_cluster, tmp_path):
    cfg, settings = tiny_config(tmp_path, "spread", "run.workers=2",
                                "run.placement_strategy=SPREAD", "max_steps=4", "log_every=2",
                                "ckpt_every=4")
    with ray_cluster.driver():
        node_ids = set(ray_cluster.node_ids())
        result = build_trainer(cfg, settings).fit()
    assert result.metrics["step"] == 4
    run = find_run(mlflow_client(settings), cfg, settings)
    placed = run.data.tags["ray_nodes"].split(",")
    assert len(placed) == 2 and len(set(placed)) == 2, placed
    assert set(placed) <= node_ids


# ----------------------------------------------------------------------------- failures


@RAY_TIMEOUT
def test_worker_kill_resumes_from_latest_checkpoint(ray_cluster, tmp_path):
    cfg, settings = tiny_config(tmp_path, "wkill", "run.workers=2", "max_steps=30",
                                "log_every=2", "val_every=10", "ckpt_every=10")
    killed: dict[str, Any] = {}

    def kill_one_worker() -> None:
        try:
            killed["ckpt_step"] = wait_for(lambda: latest_checkpoint_step(run_dir(settings)), 180,
                                           what="first checkpoint")
            workers = ray_cluster.live_actors("RayTrainWorker")
            killed["pid"] = workers[0]["pid"]
            killed["time"] = time.time()
            os.kill(killed["pid"], signal.SIGKILL)
            # For the report: when the replacement worker group is up (actors alive).
            old = {w["pid"] for w in workers}
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: len([w for w in ray_cluster.live_actors("RayTrainWorker")
                                      if w["pid"] not in old]) == settings.workers, 120,
                         interval=0.5, what="a new worker group")
                killed["regrouped"] = time.time()
        except Exception as exc:  # reported by the main thread
            killed["error"] = exc

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    with ray_cluster.driver():
        killer.start()
        result = build_trainer(cfg, settings).fit()
    killer.join(timeout=10)
    assert "error" not in killed, killed.get("error")
    assert "time" in killed, "no worker was killed"
    assert result.metrics["step"] == 30

    client = mlflow_client(settings)
    run = find_run(client, cfg, settings)
    assert run.info.status == "FINISHED"
    losses = history(client, run.info.run_id, "loss")
    kill_ms = killed["time"] * 1000
    before = [m.step for m in losses if m.timestamp <= kill_ms]
    after = [m for m in losses if m.timestamp > kill_ms]
    assert before and after, (before, [m.step for m in after])
    first = after[0].step
    # Resumed from a checkpoint at or after the one seen before the kill: no restart from 0,
    # nothing skipped (the first step after is at most one report after the last before).
    assert killed["ckpt_step"] < first <= max(before) + cfg.log_every, (before, first)
    assert sorted({m.step for m in losses}) == list(range(2, 31, 2))  # no gap
    recovery = after[0].timestamp / 1000 - killed["time"]
    redone = max(before) - (first - cfg.log_every)
    regrouped = (f"{killed['regrouped'] - killed['time']:.1f} s"
                 if "regrouped" in killed else "?")
    # One report window (log_every steps + the report) after the restart, for the breakdown.
    window = (after[1].timestamp - after[0].timestamp) / 1000 if len(after) > 1 else float("nan")
    print(f"\nworker kill (pid {killed['pid']}) after checkpoint step {killed['ckpt_step']}: "
          f"new worker group alive after {regrouped}, next reported step {first} after "
          f"{recovery:.1f} s (one {cfg.log_every}-step report window takes {window:.1f} s; "
          f"steps redone: {redone}; "
          f"{os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S')} s controller poll)")


def _train_command(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [str(BIN / "adaray"), "train", "--task", "ivf", "--data", str(SAMPLES),
            "--config", str(TINY), "--workers", "1", "--name", name,
            "--storage", str(tmp_path / "runs"), "--set", f"run.workdir={tmp_path / 'work'}",
            *extra]


def _stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@RAY_TIMEOUT
def test_driver_kill_then_rerun_resumes(ray_cluster, tmp_path):
    command = _train_command(tmp_path, "drv", "--max-steps", "30", "--set", "log_every=2",
                             "--set", "ckpt_every=10", "--set", "val_every=10")
    folder = tmp_path / "runs" / "drv"
    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=ray_cluster.env(),
                                 start_new_session=True)
    try:
        wait_for(lambda: latest_checkpoint_step(folder) or first.poll() is not None, 180,
                 what="first checkpoint of the driver's run")
        assert first.poll() is None, f"driver ended early:\n{first_log.read_text()[-3000:]}"
        actor_pids = {actor["pid"] for name in ("TrainController", "RayTrainWorker")
                      for actor in ray_cluster.live_actors(name)}
    finally:
        _stop_group(first)  # SIGKILL: the driver gets no chance to clean up
    # The job's controller and workers die with their driver (GCS); then the rerun starts.
    # The State API marks the actors dead before their processes exit, and a worker that is
    # still running can log one more step, so wait for the processes themselves.
    wait_for(lambda: not ray_cluster.live_actors("TrainController")
             and not ray_cluster.live_actors("RayTrainWorker")
             and not any(process_alive(pid) for pid in actor_pids), 60,
             what="the killed driver's actors to exit")
    ckpt_step = latest_checkpoint_step(folder)
    assert ckpt_step is not None and ckpt_step < 30

    started = time.time()
    rerun = subprocess.run(command, capture_output=True, text=True, env=ray_cluster.env(),
                           timeout=240, stdin=subprocess.DEVNULL)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-4000:]
    assert "finished at step 30" in output
    assert "Reporting training result" not in output  # Ray's per-report echo is silenced
    steps = [int(m.group(1)) for m in PROGRESS.finditer(output)]
    assert steps, f"no progress lines in the rerun's output:\n{output[-4000:]}"
    assert steps[0] == ckpt_step + 2, (ckpt_step, steps)  # continues after the checkpoint

    cfg, settings = tiny_config(tmp_path, "drv")
    client = mlflow_client(settings)
    run = find_run(client, cfg, settings)  # the same MLflow run, continued
    assert run.info.status == "FINISHED"
    rerun_steps = [m.step for m in history(client, run.info.run_id, "loss")
                   if m.timestamp >= started * 1000]
    assert rerun_steps[0] == ckpt_step + 2 and rerun_steps[-1] == 30, rerun_steps
    print(f"\ndriver killed after checkpoint step {ckpt_step}; rerun reported steps {steps}")


@RAY_TIMEOUT
def test_mlflow_server_outage_does_not_stop_training(ray_cluster, tmp_path, monkeypatch,
                                                      capfd):
    server = start_mlflow_server(tmp_path / "mlflow")
    try:
        # The driver resolves the URI (tracking.tracking_uri) and passes it to the workers.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        cfg, settings = tiny_config(tmp_path, "outage", "max_steps=30", "log_every=2",
                                    "ckpt_every=10", "val_every=10")
        stopped: dict[str, Any] = {}

        def stop_server() -> None:
            try:
                stopped["ckpt_step"] = wait_for(lambda: latest_checkpoint_step(run_dir(settings)),
                                                180, what="first checkpoint")
                server.stop()
                stopped["time"] = time.time()
            except Exception as exc:
                stopped["error"] = exc

        stopper = threading.Thread(target=stop_server, daemon=True)
        with ray_cluster.driver():
            stopper.start()
            result = build_trainer(cfg, settings).fit()
            time.sleep(1.5)  # the log monitor forwards the workers' last lines
        stopper.join(timeout=30)
        assert "error" not in stopped, stopped.get("error")
        assert "time" in stopped
        assert result.metrics["step"] == 30
    finally:
        server.stop()

    # The rank-0 Tracker warned once that tracking is unavailable: in the driver's output
    # (forwarded worker logs) and in the worker's log file.
    warning = f"MLflow tracking at {server.uri} is unavailable"
    out, err = capfd.readouterr()
    worker_logs = "".join(p.read_text(errors="replace")
                          for p in (ray_cluster.session_dir / "logs").glob("worker-*")
                          if p.suffix in (".out", ".err"))
    assert warning in worker_logs
    assert worker_logs.count(warning) == 1
    assert warning in out + err

    # What was logged before the outage is on the server (restarted on the same store).
    server.start()
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run = find_run(client, cfg, settings)
        steps = [m.step for m in history(client, run.info.run_id, "loss")]
        assert steps[:5] == [2, 4, 6, 8, 10], steps
    finally:
        server.stop()


# ----------------------------------------------------------------------------- jobs


@RAY_TIMEOUT
def test_ray_job_submit_reaches_succeeded(ray_cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission_id = f"adaray-test-{os.getpid()}-{time.time_ns()}"
    entrypoint = [sys.executable, str(REPO / "jobs" / "train.py"), "--task", "ivf",
                  "--data", str(SAMPLES), "--config", str(TINY), "--workers", "1",
                  "--name", "job", "--max-steps", "4", "--storage", str(tmp_path / "runs"),
                  "--set", f"run.workdir={tmp_path / 'work'}", "--set", "log_every=2",
                  "--set", "ckpt_every=4"]
    command = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url,
               "--submission-id", submission_id, "--no-wait", "--", *entrypoint]
    # The head's job agent registers with the dashboard asynchronously; until it has, the job
    # server answers "No available agent to submit job, please try again later" (a busy host
    # can take a while): retry that answer, as the message asks, for up to a minute.
    deadline = time.monotonic() + 60
    while True:
        submit = subprocess.run(command, capture_output=True, text=True, env=ray_cluster.env(),
                                timeout=60)
        if "No available agent" not in submit.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout + submit.stderr

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    try:
        status = wait_for(lambda: (s := client.get_job_status(submission_id)) in terminal and s,
                          180, interval=1.0, what=f"job {submission_id} to finish")
    except TimeoutError:
        client.stop_job(submission_id)
        raise
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "finished at step 4" in logs

    cli_status = subprocess.run([str(BIN / "ray"), "job", "status", "--address",
                                 ray_cluster.dashboard_url, submission_id],
                                capture_output=True, text=True, env=ray_cluster.env(),
                                timeout=60)
    assert cli_status.returncode == 0
    assert f"Job '{submission_id}' succeeded" in ANSI.sub("", cli_status.stdout + cli_status.stderr)


# ----------------------------------------------------------------------------- bad config


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "unknown_task", "missing_data"])
def test_bad_config_fails_before_ray_naming_the_field(case, tmp_path, capsys):
    import ray

    from adaray.cli import main

    data, extra, expected = str(SAMPLES), [], ""
    if case == "unknown_key":
        extra, expected = ["--set", "model.foo=1"], "model.foo"
    elif case == "wrong_type":
        extra, expected = ["--set", "max_steps=abc"], "max_steps"
    elif case == "unknown_task":
        config = tmp_path / "xyz.yaml"
        config.write_text("task: xyz\nmax_steps: 4\n")
        extra, expected = ["--config", str(config)], "task: unknown task 'xyz'"
    else:
        data = str(tmp_path / "no-such-folder")
        expected = data
    was_initialized = ray.is_initialized()
    code = main(["train", "--task", "ivf", "--data", data, "--workers", "2",
                 "--set", f"run.workdir={tmp_path / 'work'}", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert ray.is_initialized() == was_initialized

"""Sweeps on a real Ray cluster, tracked in a real MLflow server on loopback: no mocks.

The sweep tests share the session's two-node cluster (`ray_cluster`) and one MLflow server
(`mlflow_server`, module scope, `--serve-artifacts`) and run the tiny config on the real IVF
pairs (RoadScene) where ../shared/data is present, else on the bundled samples. The space and
schema tests never start Ray. The sweep test prints its wall time, how many trials ASHA stopped
and the champion's version and score.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, SAMPLES, SHARED_DATA
from mlflow_server import MlflowServer, all_artifacts, start_mlflow_server
from ray_cluster import RayTestCluster, latest_checkpoint_step, wait_for

from adaray import tracking
from adaray.config import ConfigError, to_dict
from adaray.loading import load_logged_model
from adaray.train import load_config, load_train_config
from adaray.tune import (
    DISTRIBUTIONS,
    ROLE_TAG,
    STOP_COMPLETED,
    STOP_EARLY,
    SWEEP_TAG,
    SearchSpace,
    TrialOutcome,
    load_space,
    parse_space,
    plot_trials,
    run_sweep,
    trial_table,
)

TINY = REPO / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
SWEEP_TIMEOUT = pytest.mark.timeout(600)
TRIAL_STEP = re.compile(r"\[adaray tune\] trial (\w+) step (\d+)/")

# The test sweeps: 30 steps, validation (and an ASHA result) every 10, rungs at 10 and 20.
SWEEP_SPACE = {
    "sweep": {"num_samples": 4, "max_concurrent": 2, "grace_period": 10, "max_steps": 30,
              "reduction_factor": 2, "seed": 0},
    "params": {
        "loss.w_int": {"type": "loguniform", "low": 5, "high": 80},
        "loss.w_grad": {"type": "loguniform", "low": 5, "high": 80},
        "loss.w_ssim": {"type": "loguniform", "low": 2.5, "high": 40},
        "model.n_fuse": {"type": "choice", "values": [1, 2]},
        "optim.lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
    },
}
BASE_OVERRIDES = ["val_every=10", "ckpt_every=10", "log_every=5"]


@pytest.fixture(scope="module")
def ivf_data() -> Path:
    """Real IVF pairs (RoadScene) where present, else the bundled samples."""
    real = SHARED_DATA / "IVF"
    return real if real.is_dir() else SAMPLES


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Any:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


def base_dict() -> dict[str, Any]:
    """The hyperparameters of the test sweeps' base config."""
    return to_dict(load_train_config(TINY, ["task=ivf", *BASE_OVERRIDES]))


def write_space(folder: Path, space: dict[str, Any], name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- the schema


@pytest.mark.parametrize("task", ["ivf", "mef", "mff", "mif"])
def test_shipped_spaces_load_against_their_task_configs(task):
    recipe = load_train_config(REPO / "configs" / f"{task}.yaml")
    space = load_space(REPO / "tune_spaces" / f"{task}.yaml", to_dict(recipe))
    keys = {p.key for p in space.params}
    assert {"loss.w_int", "loss.w_grad", "loss.w_ssim", "model.n_hi", "model.n_lo",
            "model.n_fuse", "model.channels", "optim.lr"} <= keys
    # The head's design is searched: the head itself, or (MEF, whose recipe takes band-pass
    # detail by the classical rule, which only the pyramid head has) the detail rule.
    assert keys & {"model.head", "model.detail"}
    by_key = {p.key: p for p in space.params}
    recipe_loss = recipe.loss.resolved(task)
    for weight in ("w_int", "w_grad", "w_ssim"):  # log-uniform around the recipe's weight
        param = by_key[f"loss.{weight}"]
        value = getattr(recipe_loss, weight)
        assert param.type == "loguniform" and param.low < value < param.high
    assert space.sweep.metric == "val_score"


@pytest.mark.parametrize(
    ("params", "sweep", "message"),
    [
        ({"loss.w_int": {"type": "gaussian", "low": 1, "high": 2}}, {},
         "params.loss.w_int.type: unknown distribution 'gaussian'"),
        ({"loss.w_int": {"type": "loguniform", "low": 30, "high": 5}}, {},
         "params.loss.w_int: low 30 must be below high 5"),
        ({"loss.w_int": {"type": "loguniform", "low": 0, "high": 5}}, {},
         "params.loss.w_int.low: a loguniform range must be positive"),
        ({"model.depth": {"type": "choice", "values": [1, 2]}}, {},
         "params.model.depth: not a TrainConfig field"),
        ({"model": {"type": "choice", "values": [1, 2]}}, {},
         "params.model: not a TrainConfig field"),
        ({"max_steps": {"type": "choice", "values": [1, 2]}}, {},
         "params.max_steps: set by the sweep itself"),
        ({"run.workers": {"type": "choice", "values": [1, 2]}}, {},
         "params.run.workers: a run setting (RunSettings), not a hyperparameter"),
        ({"storage": {"type": "fixed", "value": "/tmp/x"}}, {},
         "params.storage: a run setting (RunSettings), not a hyperparameter"),
        ({"model.channels": {"type": "choice", "values": [8, 10]}}, {},
         "params.model.channels: value 10 is invalid"),
        ({"model.n_hi": {"type": "choice", "values": []}}, {},
         "params.model.n_hi.values: expected a non-empty list"),
        ({"model.n_hi": {"type": "randint", "low": 1, "high": 2.5}}, {},
         "params.model.n_hi: randint bounds must be integers"),
        ({"optim.lr": {"type": "uniform", "low": 1e-4}}, {},
         "params.optim.lr: missing 'high'"),
        ({"optim.lr": {"type": "fixed", "value": 1e-3, "low": 1}}, {},
         "params.optim.lr: unknown key 'low'"),
        ({"optim.lr": {"type": "fixed", "value": 1e-3}}, {"metric": "loss"},
         "sweep.metric: 'loss' is not a validation metric"),
        ({"optim.lr": {"type": "fixed", "value": 1e-3}}, {"grace_period": 50, "max_steps": 20},
         "grace_period: 50 exceeds max_steps 20"),
        ({"optim.lr": {"type": "fixed", "value": 1e-3}}, {"num_trials": 4},
         "unknown field sweep.num_trials"),
    ],
)
def test_bad_space_is_rejected_naming_the_key(params, sweep, message):
    with pytest.raises(ConfigError) as info:
        parse_space({"sweep": sweep, "params": params}, base_dict(), source="bad.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.yaml: ")


def test_every_distribution_maps_to_a_tune_domain():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = parse_space({"params": {
        "loss.w_int": {"type": "loguniform", "low": 1, "high": 10},
        "loss.w_grad": {"type": "uniform", "low": 1, "high": 10},
        "model.n_hi": {"type": "randint", "low": 1, "high": 3},
        "model.n_lo": {"type": "choice", "values": [1, 2]},
        "seed": {"type": "fixed", "value": 7},
    }}, base_dict())
    assert {p.type for p in space.params} == set(DISTRIBUTIONS)
    domains = space.tune_param_space()
    assert isinstance(domains["loss.w_int"], Float) and isinstance(domains["loss.w_grad"], Float)
    assert isinstance(domains["model.n_lo"], Categorical) and domains["seed"] == 7
    n_hi = domains["model.n_hi"]
    assert isinstance(n_hi, Integer) and (n_hi.lower, n_hi.upper) == (1, 4)  # high included
    assert {n_hi.sample() for _ in range(200)} == {1, 2, 3}
    # The space round-trips through its YAML form.
    again = parse_space(space.as_dict(), base_dict())
    assert again.as_dict() == space.as_dict()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["unknown_distribution", "low_above_high", "unknown_param"])
def test_bad_space_fails_before_ray_starts(case, tmp_path, capsys):
    import ray

    from adaray.cli import main

    params = dict(SWEEP_SPACE["params"])
    if case == "unknown_distribution":
        params["loss.w_int"] = {"type": "normal", "low": 1, "high": 2}
        expected = "params.loss.w_int.type: unknown distribution 'normal'"
    elif case == "low_above_high":
        params["optim.lr"] = {"type": "loguniform", "low": 1e-2, "high": 1e-4}
        expected = "params.optim.lr: low 0.01 must be below high 0.0001"
    else:
        params["model.layers"] = {"type": "choice", "values": [1, 2]}
        expected = "params.model.layers: not a TrainConfig field"
    space = write_space(tmp_path, {"sweep": SWEEP_SPACE["sweep"], "params": params})
    was_initialized = ray.is_initialized()
    code = main(["tune", "--task", "ivf", "--data", str(SAMPLES), "--config", str(TINY),
                 "--space", str(space), "--storage", str(tmp_path / "tune"),
                 "--set", f"run.workdir={tmp_path / 'work'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{space}: {expected}" in err, err
    assert ray.is_initialized() == was_initialized
    assert not (tmp_path / "tune").exists()  # nothing was started or written


# ----------------------------------------------------------------------------- summaries


def _outcomes() -> tuple[list[TrialOutcome], SearchSpace]:
    space = parse_space(SWEEP_SPACE, base_dict())
    config = {"loss.w_int": 10.0, "loss.w_grad": 20.0, "loss.w_ssim": 5.0, "model.n_fuse": 1,
              "optim.lr": 1e-3}
    outcomes = [
        TrialOutcome("a", config, 10, 0.12, {"val_score": 0.12, "val_SF": 3.0}, STOP_EARLY),
        TrialOutcome("b", config, 30, 0.31, {"val_score": 0.31, "val_SF": 4.0}, STOP_COMPLETED),
        TrialOutcome("c", config, 0, None, {}, "error", "boom"),
        TrialOutcome("d", config, 30, 0.25, {"val_score": 0.25, "val_SF": 5.0}, STOP_COMPLETED),
    ]
    return outcomes, space


def test_trial_table_sorts_by_score_and_plot_is_written(tmp_path):
    from adaray.data import read_image

    outcomes, space = _outcomes()
    csv_text, markdown = trial_table(outcomes, space)
    rows = [line.split(",") for line in csv_text.strip().splitlines()]
    assert rows[0][:5] == ["rank", "trial_id", "val_score", "steps", "stop_reason"]
    assert [r[1] for r in rows[1:]] == ["b", "d", "a", "c"]  # best first, no score last
    assert "val_SF" in rows[0] and "optim.lr" in rows[0]
    assert markdown.count("\n") == 2 + len(outcomes)
    png = plot_trials(outcomes, space, tmp_path / "trials.png")
    image = read_image(png)
    assert image.shape[0] > 100 and image.std() > 0


# ----------------------------------------------------------------------------- promotion


def test_champion_alias_moves_only_to_a_better_score(tmp_path):
    """The promotion rule on the embedded store: register, promote, keep, then move."""
    import torch

    from adaray.model import AdaSFFuse, ModelConfig

    uri = tracking.tracking_uri(tmp_path)
    tracker_runs = []
    for _ in range(3):
        tracker = tracking.Tracker(uri, "adaray-ivf",
                                   artifact_location=tracking.artifact_root(tmp_path))
        tracker.start_run("promotion", {}, {})
        torch.manual_seed(0)
        tracker.log_model(AdaSFFuse(ModelConfig(channels=8, n_hi=1, n_lo=1, n_fuse=1,
                                                d_state=8, headdim=8)))
        tracker.end_run()
        tracker_runs.append(tracker.run_id)
    registry = tracking.ModelRegistry(uri)
    name = tracking.registered_model_name("ivf")
    assert registry.champion(name) is None

    first = registry.register(name, tracker_runs[0], 0.30, {"sweep": "s1"})
    assert registry.promote_if_better(first)[0]
    worse = registry.register(name, tracker_runs[1], 0.20, {"sweep": "s2"})
    promoted, reason = registry.promote_if_better(worse)
    assert not promoted and "does not beat champion version 1 (0.3000)" in reason
    assert registry.champion(name).version == first.version
    better = registry.register(name, tracker_runs[2], 0.35)
    assert registry.promote_if_better(better)[0]
    assert registry.champion(name).version == better.version == 3
    # Registering the same run again returns its version instead of adding one.
    assert registry.register(name, tracker_runs[2], 0.35).version == 3
    listed = registry.versions()
    assert [(v.version, v.score, v.aliases) for v in listed] == [
        (1, 0.30, []), (2, 0.20, []), (3, 0.35, ["champion"])]
    # The champion loads through the registry URI.
    model = load_logged_model(f"models:/{name}@champion", tracking_uri=uri)
    assert model.config.channels == 8

    out = subprocess.run([str(BIN / "adaray"), "models", "list", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items()
                              if k != "MLFLOW_TRACKING_URI"})
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [(fields[1], fields[2], fields[3]) for fields in lines] == [
        ("1", "0.3000", "-"), ("2", "0.2000", "-"), ("3", "0.3500", "champion")]


# ----------------------------------------------------------------------------- sweeps


def _runs_of_sweep(client: Any, name: str) -> tuple[Any, list[Any]]:
    experiment = client.get_experiment_by_name(tracking.experiment_name("ivf"))
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{SWEEP_TAG}` = '{name}'")
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    return parents[0], trials


@SWEEP_TIMEOUT
def test_sweep_asha_nested_runs_and_champion(ray_cluster: RayTestCluster,
                                              mlflow_server: MlflowServer, ivf_data, tmp_path,
                                              monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    base, settings = load_config(TINY, ["task=ivf", f"run.data={ivf_data}",
                                        f"run.workdir={tmp_path / 'work'}", *BASE_OVERRIDES])
    space = parse_space(SWEEP_SPACE, to_dict(base))
    started = time.monotonic()
    with ray_cluster.driver():
        result = run_sweep(base, settings, space, name="sweep1",
                           storage=str(tmp_path / "tune"))
    wall = time.monotonic() - started

    outcomes = {o.trial_id: o for o in result.outcomes}
    assert len(outcomes) == 4
    early = [o for o in outcomes.values() if o.stop_reason == STOP_EARLY]
    completed = [o for o in outcomes.values() if o.stop_reason == STOP_COMPLETED]
    assert early, "ASHA stopped no trial"
    assert all(o.steps < 30 for o in early) and all(o.steps == 30 for o in completed)
    assert len(early) + len(completed) == 4  # no errors
    best = max(completed, key=lambda o: o.score)
    assert result.best is not None and result.best.trial_id == best.trial_id

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    parent, trials = _runs_of_sweep(client, "sweep1")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.num_samples"] == "4"
    assert parent.data.params["space.optim.lr"] == "loguniform[0.0001, 0.01]"
    assert {"summary/trials.csv", "summary/trials.md", "summary/trials.png",
            "sweep/space.yaml", "sweep/base_config.yaml"} <= set(
        all_artifacts(client, parent.info.run_id))
    assert len(trials) == 4
    by_trial = {r.data.tags["tune_trial_id"]: r for r in trials}
    assert set(by_trial) == set(outcomes)
    for trial_id, run in by_trial.items():
        outcome = outcomes[trial_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["stop_reason"] == outcome.stop_reason
        assert run.data.params["loss.w_int"] == str(outcome.params["loss.w_int"])
        history = client.get_metric_history(run.info.run_id, "val_score")
        assert max(m.step for m in history) == outcome.steps
        assert math.isclose(run.data.metrics["val_score"], outcome.score, rel_tol=1e-9)
        assert run.info.status == ("FINISHED" if outcome.stop_reason == STOP_COMPLETED
                                   else "KILLED")

    registry = tracking.ModelRegistry(mlflow_server.uri)
    champion = registry.champion("adasffuse-ivf")
    assert champion is not None and result.version is not None
    assert champion.version == result.version.version
    assert champion.score == best.score  # the tag holds the best trial's val_score exactly
    assert champion.run_id == by_trial[best.trial_id].info.run_id
    assert load_logged_model("models:/adasffuse-ivf@champion",
                             tracking_uri=mlflow_server.uri).config.channels == 8
    print(f"\n4-trial sweep: {wall:.0f} s wall, {len(early)} stopped early by ASHA "
          f"(steps {sorted(o.steps for o in early)}), champion adasffuse-ivf version "
          f"{champion.version} with val_score {champion.score:.4f} (trial {best.trial_id})")

    # What promotion did is on the sweep's run. A version that does not beat the champion, and
    # the reason given: test_champion_alias_moves_only_to_a_better_score; a second sweep's
    # promotion, either way: the second demo of test_demo.py.
    assert result.promoted and parent.data.tags["promotion"] == result.promotion_note
    assert f"version {champion.version} ({champion.score:.4f})" in result.promotion_note

    # A sweep name is not reused by accident.
    with pytest.raises(ConfigError, match="already exists"):
        run_sweep(base, settings, space, name="sweep1", storage=str(tmp_path / "tune"))


def _experiment_trials(folder: Path) -> dict[str, tuple[str, int]]:
    """{trial id: (status, last reported step)} from Tune's newest experiment state file."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):  # being rewritten
        return {}
    trials = {}
    for trial_json, runtime_json in data["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        step = int((runtime.get("last_result") or {}).get("step", 0))
        trials[trial["trial_id"]] = (trial["status"], step)
    return trials


def _result_lines(folder: Path) -> dict[str, int]:
    """Results Tune wrote per trial folder (result.json lines), by trial id."""
    counts = {}
    for result in folder.glob("run_trial_*/result.json"):
        trial_id = result.parent.name.split("_")[2]
        counts[trial_id] = len(result.read_text().splitlines())
    return counts


@SWEEP_TIMEOUT
def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(
        ray_cluster: RayTestCluster, mlflow_server: MlflowServer, ivf_data, tmp_path):
    space = write_space(tmp_path, {**SWEEP_SPACE, "sweep": {
        **SWEEP_SPACE["sweep"], "num_samples": 2, "max_concurrent": 1}})
    command = [str(BIN / "adaray"), "tune", "--task", "ivf", "--data", str(ivf_data),
               "--config", str(TINY), "--space", str(space), "--name", "resumable",
               "--storage", str(tmp_path / "tune"), "--set", f"run.workdir={tmp_path / 'work'}",
               *[arg for o in BASE_OVERRIDES for arg in ("--set", o)]]
    env = ray_cluster.env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    folder = tmp_path / "tune" / "resumable"
    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        # At least one trial finished, as recorded in the sweep's saved state.
        wait_for(lambda: first.poll() is not None or any(
            status == "TERMINATED" for status, _ in _experiment_trials(folder).values()), 400,
            interval=1.0, what="a finished trial in the sweep's state")
        assert first.poll() is None, f"driver ended early:\n{first_log.read_text()[-3000:]}"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    wait_for(lambda: not ray_cluster.live_actors("TrainController")
             and not ray_cluster.live_actors("RayTrainWorker"), 60,
             what="the killed driver's actors to exit")
    before = _experiment_trials(folder)
    finished = {t: step for t, (status, step) in before.items() if status == "TERMINATED"}
    assert finished and len(finished) < 2, before
    lines_before = _result_lines(folder)
    # Unfinished trials that had checkpointed: their Train runs must continue from there.
    checkpointed = {t: step for t in before if t not in finished
                    and (step := latest_checkpoint_step(folder / "train" / t)) is not None}

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env,
                             timeout=500, stdin=subprocess.DEVNULL)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "resuming sweep resumable" in output
    for trial_id in finished:  # not started again
        assert f"trial {trial_id} started" not in output, output[-4000:]
    after = _experiment_trials(folder)
    assert set(before) <= set(after) and len(after) == 2
    assert all(status == "TERMINATED" for status, _ in after.values()), after
    for trial_id, step in finished.items():
        assert after[trial_id][1] == step
        assert _result_lines(folder)[trial_id] == lines_before[trial_id]
    table = (folder / "summary" / "trials.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[1] for row in table) == sorted(after)
    reported = {}
    for match in TRIAL_STEP.finditer(output):
        reported.setdefault(match.group(1), int(match.group(2)))
    for trial_id, step in checkpointed.items():  # first report after the checkpoint's step
        assert reported.get(trial_id, 0) > step, (trial_id, step, reported)
    print(f"\nsweep driver killed with trials {sorted(finished)} finished and "
          f"{checkpointed or 'no unfinished trial'} checkpointed; resume ran "
          f"{sorted(set(after) - set(finished))}, first reported steps {reported}")

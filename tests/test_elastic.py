"""Elastic training on the session's two-node cluster, with real signals: a run started with
`workers: 1-2` and SPREAD, each worker taking a whole node (2 CPUs), loses its second node
(every process of it, the raylet included, SIGKILLed), goes on with one worker from the latest
checkpoint and finishes; one MLflow run records it all, world size per step included. A new
node joins as soon as the run trains on one worker: where Ray grows the group back before the
run ends (it takes it some 20-40 s to restart on two workers; on a quiet machine the tiny run
may finish first), the test checks that restart too."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from conftest import SAMPLES, SHARED_DATA
from ray_cluster import CPUS_PER_NODE, latest_checkpoint_step, wait_for
from test_train import find_run, history, mlflow_client, run_dir, tiny_config

from adaray import tracking
from adaray.ray_state import resource_holders
from adaray.train import build_trainer

MAX_STEPS = 120
LOG_EVERY, CKPT_EVERY = 5, 20


@pytest.mark.timeout(480)
def test_elastic_run_survives_a_lost_node_and_grows_back(ray_cluster, tmp_path, monkeypatch):
    data = SHARED_DATA / "IVF" if (SHARED_DATA / "IVF").is_dir() else SAMPLES  # RoadScene
    cfg, settings = tiny_config(
        tmp_path, "elastic", "run.workers=1-2", "run.placement_strategy=SPREAD",
        f"run.cpus_per_worker={CPUS_PER_NODE}",
        "run.resize_check_s=1", "run.max_failures=6", f"max_steps={MAX_STEPS}",
        f"log_every={LOG_EVERY}", f"ckpt_every={CKPT_EVERY}", "val_every=500", data=data)
    client = mlflow_client(settings)
    experiment = tracking.experiment_name(cfg.task)

    def world_sizes() -> list[tuple[int, int, int]]:
        """(step, world size, ms timestamp) reported so far."""
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        return [(m.step, int(m.value), m.timestamp)
                for m in history(client, runs[0].info.run_id, "world_size")] if runs else []

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = build_trainer(cfg, settings).fit()
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc

    def running() -> bool:
        assert training.is_alive(), f"the run ended early: {outcome}"
        return True

    events: dict[str, Any] = {}
    # A restart waits at most 10 s for a worker group it cannot place (Ray's default: 60 s):
    # the first restart after the kill may still count the lost node's CPUs.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    with ray_cluster.driver():
        import ray

        # Start with both nodes free (an earlier test's tasks may still hold CPUs for a moment)
        # and with no reservation left in Ray's autoscaling coordinator by an earlier test's
        # Train run whose controller was killed: the run would start on one worker.
        try:
            wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2 * CPUS_PER_NODE, 120,
                     interval=0.5, what="every CPU of the cluster free")
        except TimeoutError as exc:
            holders = resource_holders(ray_cluster.address, job_id="")
            raise AssertionError(f"{exc}; held by: {'; '.join(holders) or 'tasks'}") from exc
        ray_cluster.reset_autoscaling_coordinator()
        training = threading.Thread(target=fit, daemon=True)
        training.start()
        wait_for(lambda: running() and any(size == 2 for _, size, _ in world_sizes())
                 and (latest_checkpoint_step(run_dir(settings)) or 0) >= CKPT_EVERY, 240,
                 interval=0.5, what="two workers and a checkpoint")
        events["killed"] = time.time()
        ray_cluster.kill_worker_node()  # Ray's calls that add nodes need the main thread
        time.sleep(1)  # a checkpoint reported just before the kill is registered by now
        events["checkpoint"] = latest_checkpoint_step(run_dir(settings))
        wait_for(lambda: any(size == 1 for _, size, _ in world_sizes())
                 or not training.is_alive(), 180, interval=0.5, what="training on one worker")
        events["shrunk"] = events["rejoined"] = time.time()
        ray_cluster.add_worker_node()
        training.join(timeout=300)
    assert not training.is_alive(), "the run did not finish within 300 s of the rejoin"
    assert "error" not in outcome, outcome["error"]
    result = outcome["result"]
    assert result.error is None and result.metrics["step"] == MAX_STEPS
    assert latest_checkpoint_step(run_dir(settings)) == MAX_STEPS

    run = find_run(client, cfg, settings)  # one MLflow run for the whole elastic run
    assert run.info.status == "FINISHED"
    sizes = world_sizes()
    phases = [sizes[0][1]] + [b[1] for a, b in itertools.pairwise(sizes) if a[1] != b[1]]
    assert phases in ([2, 1], [2, 1, 2]), phases
    one = [step for step, size, _ in sizes if size == 1]
    # Each restart resumed from the latest checkpoint: the first step after it is one report
    # later, the checkpoint of the kill was kept, and no logged step is missing.
    assert one[0] == events["checkpoint"] + LOG_EVERY, (events["checkpoint"], one[:3])
    regrown = next((step for step, size, at in sizes
                    if size == 2 and at > events["rejoined"] * 1000), None)
    if regrown is not None:
        assert (regrown - LOG_EVERY) % CKPT_EVERY == 0 and regrown <= max(one) + LOG_EVERY
    steps = sorted({m.step for m in history(client, run.info.run_id, "loss")})
    assert steps == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    grew = ("the run finished on one worker before Ray grew it back" if regrown is None else
            f"two workers again from step {regrown}")
    print(f"\nelastic: node lost after checkpoint {events['checkpoint']}; one worker from step "
          f"{one[0]} ({events['shrunk'] - events['killed']:.1f} s later); a node rejoined; "
          f"{grew}; finished at {MAX_STEPS}")

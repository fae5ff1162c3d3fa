"""`adaray demo --quick` end to end, twice in one work folder (the second time from the installed
wheel, on its own Ray, beside a foreign Ray instance and a sweep); Ctrl-C of a demo on its own
Ray; a demo that cannot get its CPUs.

The first end-to-end run joins the session's test cluster (RAY_ADDRESS), as a demo submitted to a
cluster would. The Ctrl-C test and the wheel's demo start their own local Ray (private
RAY_TMPDIR); the Ctrl-C test checks that none of its Ray processes outlive it. While the wheel's
demo runs, a sweep runs on the session cluster and a third instance, a plain `ray.init()` in
another process, runs too: with several instances on the host, Ray's State API cannot guess
which one it is in, so every adaray process must know its own (issue G).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SAMPLES
from ray_cluster import RayTestCluster, own_ray_process, ray_processes, wait_for
from wheel_venv import InstalledWheel

from adaray import tracking
from adaray.data import read_image

ADARAY = str(Path(sys.executable).parent / "adaray")


def _checked_summary(output: str) -> dict[str, str]:
    """The closing summary lines of a demo's output, by label, after checking every phase ran."""
    for number in range(1, 6):
        assert f"=== [{number}/5]" in output, output[-5000:]
    closing = output[output.rindex("=== adaray demo: done"):].splitlines()
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for line in closing if ":" in line}


@pytest.mark.slow  # starts its own Ray
@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_demo_and_its_local_ray(tmp_path):
    log = tmp_path / "demo.log"
    command = [ADARAY, "demo", "--quick", "--workdir", str(tmp_path / "work")]
    with own_ray_process(command, log, "adaray-dm-") as (process, ray_tmp):
        # Interrupt during training: Ray Train's fit() would put its own SIGINT handler in place.
        wait_for(lambda: process.poll() is not None or "TrainController" in log.read_text(), 120,
                 what="the demo's training phase")
        assert process.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: ray_processes(ray_tmp), 60, what="the demo's Ray processes")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = process.wait(timeout=120)
        text = log.read_text()
        assert code == 130, text[-3000:]
        assert "interrupted; stopping Serve and Ray" in text
        assert "=== [5/5] shut down Serve and the local Ray" in text
        wait_for(lambda: not ray_processes(ray_tmp), 30,
                 what="the demo's Ray processes to exit")


FOREIGN_RAY = """
import ray, time
ray.init(logging_level="ERROR")
print("foreign ray at", ray.get_runtime_context().gcs_address, flush=True)
time.sleep(1800)
"""
# Two trials, at most one at a time, with the random searcher (which once ignored the limit).
SEQUENTIAL_SPACE = {
    "sweep": {"num_samples": 2, "max_concurrent": 1, "grace_period": 5, "max_steps": 10,
              "reduction_factor": 2, "searcher": "random", "seed": 0},
    "params": {"optim.lr": {"type": "loguniform", "low": 1.0e-3, "high": 5.0e-3}},
}
TRIAL_EVENT = re.compile(r"\[adaray tune\] trial (\w+) (started|completed|stopped early|failed)")


def _most_trials_at_once(output: str) -> int:
    running: set[str] = set()
    most = 0
    for trial, event in TRIAL_EVENT.findall(output):
        if event == "started":
            running.add(trial)
        else:
            running.discard(trial)
        most = max(most, len(running))
    return most


def _live_placement_groups(address: str) -> list[str]:
    from ray.util.state import list_placement_groups

    return [f"{g.placement_group_id} {g.state}" for g in list_placement_groups(address=address)
            if g.state != "REMOVED"]


@pytest.mark.timeout(1200)
def test_quick_demo_twice_in_one_workdir_then_from_the_wheel_beside_a_foreign_ray(
        ray_cluster: RayTestCluster, installed_wheel: InstalledWheel, tmp_path):
    """The first demo joins the session cluster (as a submitted demo would). The second, in the
    same work folder, is the installed wheel's, run from a folder outside the checkout on its own
    Ray while a foreign Ray instance (a plain `ray.init()` in another process) and a sweep on the
    session cluster run beside it (issue G)."""
    env = ray_cluster.env()
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([ADARAY, "demo", "--quick", "--workdir", str(tmp_path / "work")],
                         capture_output=True, text=True, env=env, timeout=420,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    summary = _checked_summary(run.stdout)
    report = Path(summary["evaluation report"])
    grid = Path(summary["comparison grid"])
    fused = Path(summary["fused over HTTP"].split(" (model")[0])
    assert report.is_file() and "| champion |" in report.read_text()
    assert "| trained |" in report.read_text()
    assert "| laplacian |" in report.read_text()
    assert read_image(grid).shape[0] > 100
    assert read_image(fused).ndim == 3  # a color visible source gives a color result
    assert "models:/adasffuse-ivf@champion version 1" in summary["fused over HTTP"]
    assert summary["browse the runs"].startswith("mlflow ui --backend-store-uri sqlite:///")
    registry = tracking.ModelRegistry(tracking.tracking_uri(tmp_path / "work"))
    assert registry.champion("adasffuse-ivf").version == 1

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SEQUENTIAL_SPACE))
    sweep_command = [ADARAY, "tune", "--task", "ivf", "--data", str(SAMPLES), "--config",
                     str(REPO / "configs" / "tiny.yaml"), "--space", str(space),
                     "--set", f"run.workdir={tmp_path / 'sweep-work'}", "--set", "val_every=5",
                     "--set", "ckpt_every=5", "--name", "beside-foreign"]
    # The wheel's demo, from tmp_path (outside the checkout): `--workdir work` is the same folder.
    demo_command = [installed_wheel.adaray, "demo", "--quick", "--workdir", "work"]
    foreign_log, demo_log = tmp_path / "foreign.log", tmp_path / "demo.log"
    with own_ray_process([sys.executable, "-c", FOREIGN_RAY], foreign_log, "adaray-fr-") as (
            foreign, _):
        found = wait_for(lambda: re.search(r"foreign ray at (\S+)", foreign_log.read_text()),
                         120, what="the foreign Ray instance")
        foreign_address = found.group(1)
        with own_ray_process(demo_command, demo_log, "adaray-wh-", cwd=tmp_path) as (demo, _):
            sweep = subprocess.run(sweep_command, capture_output=True, text=True, env=env,
                                   timeout=600, stdin=subprocess.DEVNULL)
            demo_code = demo.wait(timeout=600)
        demo_output = demo_log.read_text()
        sweep_output = sweep.stdout + sweep.stderr
        assert foreign.poll() is None, foreign_log.read_text()[-2000:]  # it ran all along
        assert _live_placement_groups(foreign_address) == []
    assert demo_code == 0, demo_output[-5000:]
    assert sweep.returncode == 0, sweep_output[-5000:]
    again = _checked_summary(demo_output)

    # The second run reused the work folder: new run and sweep names, a second registered
    # version, the alias on whichever scores better, the first run's report left in place.
    assert report.is_file()
    assert Path(again["evaluation report"]).is_file()
    assert Path(again["evaluation report"]) != report
    assert [v.version for v in registry.versions("adasffuse-ivf")] == [1, 2]
    champion = registry.champion("adasffuse-ivf")
    scores = {v.version: v.score for v in registry.versions("adasffuse-ivf")}
    assert champion.version == (2 if scores[2] > scores[1] else 1), scores
    assert f"@champion version {champion.version}" in again["fused over HTTP"]

    # The wheel's demo started its own instance, said so and named the foreign one.
    announced = next((line for line in demo_output.splitlines()
                      if " on this host: " in line and line.startswith("[adaray] ")), "")
    assert f"{foreign_address} (started by pid {foreign.pid}: -c" in announced, demo_output[:3000]
    assert "starting a separate one" in announced and "RAY_ADDRESS=" in announced
    assert "placement groups left: none" in demo_output
    assert _live_placement_groups(ray_cluster.address) == []
    # Ray Train's cleaner found its own cluster in every process (it failed with this before).
    for output in (demo_output, sweep_output):
        assert "Found multiple active Ray instances" not in output
        assert "[adaray] removed placement group" not in output  # Ray's own clean-up did it
    assert _most_trials_at_once(sweep_output) == 1, sweep_output[-5000:]
    assert len(set(TRIAL_EVENT.findall(sweep_output))) >= 4  # both trials started and ended
    # Serve, Train and Tune actors of the first demo and the sweep are gone from the cluster.
    for name in ("ServeController", "ProxyActor", "ServeReplica:adaray:FusionModels",
                 "ServeReplica:adaray:FusionAPI", "TrainController", "RayTrainWorker"):
        assert ray_cluster.live_actors(name) == [], name


@pytest.mark.timeout(300)
def test_demo_fails_naming_the_holder_when_its_cpus_are_taken(ray_cluster: RayTestCluster,
                                                              tmp_path):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    env = ray_cluster.env()
    env.pop("MLFLOW_TRACKING_URI", None)
    with ray_cluster.driver():
        holder = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_SPREAD")
        ray.get(holder.ready(), timeout=60)
        try:
            run = subprocess.run([ADARAY, "demo", "--quick", "--workdir", str(tmp_path / "work"),
                                  "--resource-wait", "3"], capture_output=True, text=True,
                                 env=env, timeout=240, stdin=subprocess.DEVNULL)
        finally:
            remove_placement_group(holder)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-5000:]
    assert "=== [2/5]" not in output  # it stopped in training, where it waited
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("adaray demo: failed: [adaray] waited "), output[-3000:]
    assert "[CPU 1] (this job) cannot be placed; the cluster has CPU 4 (0 free) on 2 nodes" in last
    assert f"placement group {holder.id.hex()[:12]} [CPU 2] + [CPU 2]" in last
    assert "=== [5/5] shut down Serve and the local Ray" in output
    wait_for(lambda: not ray_cluster.live_actors("TrainController"), 60,
             what="the demo's Train controller to exit")

"""`adaray demo --quick` end to end, twice in one work folder; Ctrl-C of a demo on its own Ray.

The end-to-end run joins the session's test cluster (RAY_ADDRESS), as a demo submitted to a
cluster would: a second Ray instance on this host would make Ray Train's placement-group cleaner
ambiguous about which cluster to clean. The Ctrl-C test starts the demo on its own local Ray
(private RAY_TMPDIR) and checks that none of its Ray processes outlive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ray_cluster import RayTestCluster, own_ray_process, ray_processes, wait_for

from adaray import tracking
from adaray.data import read_image

ADARAY = str(Path(sys.executable).parent / "adaray")


def _run_quick_demo(workdir: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Run `adaray demo --quick`; returns its output and its closing summary lines by label."""
    run = subprocess.run([ADARAY, "demo", "--quick", "--workdir", str(workdir)],
                         capture_output=True, text=True, env=env, timeout=420,
                         stdin=subprocess.DEVNULL)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    for number in range(1, 6):
        assert f"=== [{number}/5]" in output
    summary = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
               for line in run.stdout.splitlines()[-8:] if ":" in line}
    return output, summary


@pytest.mark.timeout(900)
def test_quick_demo_runs_every_phase_twice_in_one_workdir(ray_cluster: RayTestCluster,
                                                          tmp_path):
    workdir = tmp_path / "work"
    env = ray_cluster.env()
    env.pop("MLFLOW_TRACKING_URI", None)
    _, summary = _run_quick_demo(workdir, env)
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
    registry = tracking.ModelRegistry(tracking.tracking_uri(workdir))
    assert registry.champion("adasffuse-ivf").version == 1

    # A second run reuses the work folder: new run and sweep names, a second registered
    # version, the alias on whichever scores better, the first run's report left in place.
    _, again = _run_quick_demo(workdir, env)
    assert report.is_file()
    assert Path(again["evaluation report"]).is_file()
    assert Path(again["evaluation report"]) != report
    assert [v.version for v in registry.versions("adasffuse-ivf")] == [1, 2]
    champion = registry.champion("adasffuse-ivf")
    scores = {v.version: v.score for v in registry.versions("adasffuse-ivf")}
    assert champion.version == (2 if scores[2] > scores[1] else 1), scores
    assert f"@champion version {champion.version}" in again["fused over HTTP"]
    # Serve, Train and Tune actors of the demo are gone from the cluster.
    for name in ("ServeController", "ProxyActor", "ServeReplica:adaray:FusionModels",
                 "ServeReplica:adaray:FusionAPI", "TrainController", "RayTrainWorker"):
        assert ray_cluster.live_actors(name) == [], name


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

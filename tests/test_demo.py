"""`adaray demo --quick` end to end, and Ctrl-C of a demo on its own local Ray.

The end-to-end run joins the session's test cluster (RAY_ADDRESS), as a demo submitted to a
cluster would: a second Ray instance on this host would make Ray Train's placement-group cleaner
ambiguous about which cluster to clean. The Ctrl-C test starts the demo on its own local Ray
(private RAY_TMPDIR) and checks that none of its Ray processes outlive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ray_cluster import RayTestCluster, _alive, _pids_mentioning, wait_for

from adaray import tracking
from adaray.data import read_image

ADARAY = str(Path(sys.executable).parent / "adaray")


@pytest.mark.timeout(600)
def test_quick_demo_runs_every_phase_and_leaves_nothing_running(ray_cluster: RayTestCluster,
                                                                tmp_path):
    workdir = tmp_path / "work"
    env = ray_cluster.env()
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([ADARAY, "demo", "--quick", "--workdir", str(workdir)],
                         capture_output=True, text=True, env=env, timeout=540,
                         stdin=subprocess.DEVNULL)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    for number in range(1, 6):
        assert f"=== [{number}/5]" in output
    summary = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
               for line in run.stdout.splitlines()[-8:] if ":" in line}
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
    champion = registry.champion("adasffuse-ivf")
    assert champion is not None and champion.version == 1
    # Serve, Train and Tune actors of the demo are gone from the cluster.
    for name in ("ServeController", "ProxyActor", "ServeReplica:adaray:FusionModels",
                 "ServeReplica:adaray:FusionAPI", "TrainController", "RayTrainWorker"):
        assert ray_cluster.live_actors(name) == [], name


@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_demo_and_its_local_ray(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="adaray-dm-", dir="/tmp")  # short: Ray socket paths
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_TMPDIR", "MLFLOW_TRACKING_URI")}
    env["RAY_TMPDIR"] = ray_tmp
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([ADARAY, "demo", "--quick", "--workdir",
                                    str(tmp_path / "work")], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    try:
        wait_for(lambda: process.poll() is not None or "=== [1/5]" in log.read_text(), 120,
                 what="the demo's first phase")
        assert process.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: _pids_mentioning(ray_tmp), 60, what="the demo's Ray processes")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = process.wait(timeout=120)
        text = log.read_text()
        assert code == 130, text[-3000:]
        assert "interrupted; stopping Serve and Ray" in text
        assert "=== [5/5] shut down Serve and the local Ray" in text
        wait_for(lambda: not [p for p in _pids_mentioning(ray_tmp) if _alive(p)], 30,
                 what="the demo's Ray processes to exit")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in _pids_mentioning(ray_tmp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)

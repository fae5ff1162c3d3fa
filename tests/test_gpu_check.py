"""bench/gpu_check.py where no GPU exists (these machines): its no-GPU path, its table and its
exit code. The GPU rows themselves run only on a machine with CUDA."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_every_check_is_skipped_and_it_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA GPU here")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    names = list(_module().checks(None))
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == names
    assert all(" | skipped |  | no CUDA device |" in row for row in rows)
    assert "ssd bf16" in names and "serve gpu replica" in names and "adaray train --gpu" in names
    unknown = subprocess.run([sys.executable, str(SCRIPT), "--only", "warp-drive"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert unknown.returncode == 2 and "unknown check 'warp-drive'" in unknown.stderr


def test_rows_render_and_decide_the_exit_code():
    gpu_check = _module()

    def skipped():
        raise gpu_check.CheckSkippedError("mamba-ssm is not installed")

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access")

    rows = [gpu_check.run_check("ssd fp32", lambda: (True, "fwd 0.3 ms", "bound 0.01")),
            gpu_check.run_check("ssd bf16", skipped),
            gpu_check.run_check("fuse", lambda: (False, "0 img/s", "a | b"))]
    assert [r.status for r in rows] == ["ok", "skipped", "failed"]
    assert gpu_check.exit_code(rows) == 1
    assert gpu_check.exit_code(rows[:2]) == 0
    crashed = gpu_check.run_check("train step bf16", broken)
    assert crashed.status == "failed"
    assert crashed.note == "RuntimeError: CUDA error: an illegal memory access"
    table = gpu_check.render([*rows, crashed]).splitlines()
    assert table[:2] == ["| check | result | figures | note |", "|---|---|---|---|"]
    assert table[2] == "| ssd fp32 | ok | fwd 0.3 ms | bound 0.01 |"
    assert table[3] == "| ssd bf16 | skipped |  | mamba-ssm is not installed |"
    assert table[4] == "| fuse | failed | 0 img/s | a / b |"  # a note cannot break the table
    with pytest.raises(ValueError, match="status 'maybe'"):
        gpu_check.render([gpu_check.Row("x", "maybe")])

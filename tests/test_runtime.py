"""Process settings for CPU speed (`adaray.runtime`): every Ray worker of an adaray job starts
with the allocator settings."""

from __future__ import annotations

import json
import subprocess
import sys

from adaray.runtime import ALLOCATOR_ENV

PROBE = """
import json, os, sys, ray
from adaray.runtime import init_ray
init_ray({"ADARAY_PROBE": "yes"})
names = sys.argv[1:]
print(json.dumps(ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in names}).remote())))
"""


def test_init_ray_gives_every_worker_the_allocator_env(ray_cluster):
    names = [*ALLOCATOR_ENV, "ADARAY_PROBE"]
    out = subprocess.run([sys.executable, "-c", PROBE, *names], env=ray_cluster.env(),
                         check=True, capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {**ALLOCATOR_ENV, "ADARAY_PROBE": "yes"}

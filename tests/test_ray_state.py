"""Resource waits and placement-group hygiene (`adaray.ray_state`) on the session's real cluster.

The cluster has two nodes of 2 CPUs. A placement group holding one node's CPUs makes a request
for 2 CPUs on each of two nodes unplaceable: the watch's message must name that request, what
the cluster has, and the holder. A placement group made inside `placement_groups_released`
and never removed must be gone when the block ends.
"""

from __future__ import annotations

import pytest
from ray_cluster import RayTestCluster, wait_for

from adaray.ray_state import (
    ResourceWaitWatch,
    format_resources,
    job_placement_groups,
    placement_groups_released,
    wait_limit_s,
)


def _placement_group(bundles: list[dict[str, float]], strategy: str = "PACK") -> object:
    from ray.util.placement_group import placement_group

    return placement_group(bundles, strategy=strategy)


def _groups_of_other_jobs() -> list[str]:
    """Placement groups of jobs other than this one that still hold or ask for resources."""
    import ray
    from ray.util.state import list_placement_groups

    job_id = ray.get_runtime_context().get_job_id()
    return [f"{g.placement_group_id[:12]} (job {g.creator_job_id}, {g.state})"
            for g in list_placement_groups(detail=True)
            if g.state in ("PENDING", "CREATED", "RESCHEDULING") and g.creator_job_id != job_id]


def test_wait_message_names_the_request_the_cluster_and_the_holders(ray_cluster: RayTestCluster):
    import ray
    from ray.util.placement_group import remove_placement_group

    with ray_cluster.driver():
        # The message lists every holder: the groups of jobs that earlier tests ended must be
        # gone first (Ray removes a finished job's groups a moment after it ends; one that
        # stays longer is a leak, and fails here naming it).
        try:
            wait_for(lambda: not _groups_of_other_jobs(), 60, interval=0.5,
                     what="no placement group of an ended job")
        except TimeoutError:
            pytest.fail(f"placement groups left by ended jobs: {_groups_of_other_jobs()}")
        holder = _placement_group([{"CPU": 2}], "STRICT_PACK")
        ray.get(holder.ready(), timeout=60)
        waiting = _placement_group([{"CPU": 2}, {"CPU": 2}], "STRICT_SPREAD")
        try:
            told: list[str] = []
            watch = ResourceWaitWatch(limit_s=30, on_wait=told.append)
            assert watch.poll(now=1000.0) == []  # the wait starts
            assert watch.poll(now=1020.0) == []  # under the limit
            messages = watch.poll(now=1031.0)
            assert watch.poll(now=1060.0) == []  # one line per wait
        finally:
            remove_placement_group(waiting)
            remove_placement_group(holder)
        assert told == messages and len(messages) == 1, told
        message = messages[0]
        print(message)
        assert message.startswith("[adaray] waited 31 s for resources: placement group "
                                  f"{waiting.id.hex()[:12]} [CPU 2] + [CPU 2] (this job) cannot "
                                  "be placed; the cluster has CPU 4 (2 free) on 2 nodes; held by:")
        assert f"placement group {holder.id.hex()[:12]} [CPU 2] (this job)" in message
        assert "ADARAY_RESOURCE_WAIT_S" in message
        # A request that stopped waiting and comes back later starts a new wait.
        assert watch.poll(now=1200.0) == [] and watch.waiting == {}


def test_placement_groups_left_by_a_run_are_removed(ray_cluster: RayTestCluster, capsys):
    import ray

    with ray_cluster.driver():
        before = set(job_placement_groups())
        with placement_groups_released("the test run", grace_s=1.0):
            leaked = _placement_group([{"CPU": 1}])
            ray.get(leaked.ready(), timeout=60)
            assert leaked.id.hex() in job_placement_groups()
        assert set(job_placement_groups()) == before
    out = capsys.readouterr().out
    assert (f"[adaray] removed placement group {leaked.id.hex()[:12]} [CPU 1] (this job), left "
            "by the test run after it ended") in out


def test_wait_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("ADARAY_RESOURCE_WAIT_S", raising=False)
    assert wait_limit_s() == 120.0
    monkeypatch.setenv("ADARAY_RESOURCE_WAIT_S", "7.5")
    assert wait_limit_s() == 7.5
    for bad in ("0", "soon", "-3"):
        monkeypatch.setenv("ADARAY_RESOURCE_WAIT_S", bad)
        with pytest.raises(ValueError, match="ADARAY_RESOURCE_WAIT_S"):
            wait_limit_s()


def test_resources_are_shown_without_the_quiet_ones():
    assert format_resources({"CPU": 1.0, "memory": 5e9, "node:10.0.0.1": 0.001,
                             "GPU": 0.5}) == "CPU 1, GPU 0.5"
    assert format_resources({"memory": 1.0}) == "no CPU/GPU"

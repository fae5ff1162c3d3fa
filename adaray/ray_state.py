"""What adaray asks Ray's State API while it runs: requests of this job that wait for resources
(and who holds them), and placement groups a finished run left behind.

Both guard against one failure: a run waiting, silently and for ever, for CPUs that something
else holds. Ray Train removes its worker group's placement group when a run ends; when the
controller is killed instead (Tune stops a trial by ending its actor), a detached cleaner actor
removes it, and when that cleaner fails too the group stays and the next run waits.

- `watch_resource_waits` (started by `adaray.runtime.init_ray`) polls this job's pending
  placement groups and actors; one that waits longer than the limit gets one line saying what
  it asks for, what the cluster has and which placement groups and actors hold the rest.
- `placement_groups_released(run)` wraps a `fit()`: on exit no placement group this job
  created inside the block is left (Ray's own clean-up gets a grace period, then adaray removes
  what is left and says so).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from adaray.errors import ConfigError

WAIT_LIMIT_ENV = "ADARAY_RESOURCE_WAIT_S"
DEFAULT_WAIT_LIMIT_S = 120.0
POLL_INTERVAL_S = 5.0
# A waiting request keeps its clock across short gaps: Ray Train gives up on a placement group
# after 60 s (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S) and asks again with a new one.
SAME_WAIT_GAP_S = 30.0
RELEASE_GRACE_S = 10.0  # time Ray's own clean-up gets before adaray removes what is left
# Resources every node has and nothing waits for in practice; left out of the messages.
_QUIET_RESOURCES = ("memory", "object_store_memory", "node:", "bundle_group", "accelerator_type")


def wait_limit_s() -> float:
    """The limit in seconds: ADARAY_RESOURCE_WAIT_S, else 120 (a bad value raises ValueError)."""
    raw = os.environ.get(WAIT_LIMIT_ENV, "")
    try:
        limit = float(raw) if raw else DEFAULT_WAIT_LIMIT_S
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise ConfigError(f"{WAIT_LIMIT_ENV}={raw!r}: expected seconds > 0, e.g. 120")
    return limit


def format_resources(resources: dict[str, float]) -> str:
    """`CPU 1, GPU 0.5`: the resources a request or a holder counts in, quiet ones left out."""
    shown = [f"{name} {amount:g}" for name, amount in sorted(resources.items())
             if amount and not name.startswith(_QUIET_RESOURCES) and "_group_" not in name]
    return ", ".join(shown) or "no CPU/GPU"


def _short(ray_id: str) -> str:
    return ray_id[:12]


def _bundles(group: Any) -> list[dict[str, float]]:
    return [b.get("unit_resources", {}) for b in (group.bundles or [])]


def _describe_group(group: Any, job_id: str) -> str:
    bundles = _bundles(group)
    whose = "this job" if group.creator_job_id == job_id else f"job {group.creator_job_id}"
    shown = " + ".join(f"[{format_resources(b)}]" for b in bundles)
    return f"placement group {_short(group.placement_group_id)} {shown} ({whose})"


def _describe_actor(actor: Any, job_id: str) -> str:
    whose = "this job" if actor.job_id == job_id else f"job {actor.job_id}"
    return (f"actor {actor.class_name} {_short(actor.actor_id)} "
            f"[{format_resources(actor.required_resources or {})}] ({whose})")


@dataclass
class PendingRequest:
    """A request of this job that waits for resources, keyed by what it asks for."""

    key: str  # what it asks for: a recreated placement group with the same bundles is the same
    text: str  # its description in the message


def pending_requests(address: str, job_id: str) -> list[PendingRequest]:
    """This job's placement groups that are PENDING and its actors waiting to be created."""
    from ray.util.state import list_actors, list_placement_groups

    found = []
    for group in list_placement_groups(address=address, detail=True, filters=[
            ("creator_job_id", "=", job_id), ("state", "=", "PENDING")]):
        key = "pg:" + repr(sorted(tuple(sorted(b.items())) for b in _bundles(group)))
        found.append(PendingRequest(key, _describe_group(group, job_id)))
    for actor in list_actors(address=address, detail=True, filters=[
            ("job_id", "=", job_id), ("state", "=", "PENDING_CREATION")]):
        if actor.placement_group_id:  # waits for its placement group, reported above
            continue
        found.append(PendingRequest(f"actor:{actor.class_name}", _describe_actor(actor, job_id)))
    return found


def resource_holders(address: str, job_id: str) -> list[str]:
    """Created placement groups, and live actors outside any, that hold CPUs or GPUs."""
    from ray.util.state import list_actors, list_placement_groups

    holders = [_describe_group(g, job_id) for g in list_placement_groups(
        address=address, detail=True, filters=[("state", "=", "CREATED")])]
    for actor in list_actors(address=address, detail=True, filters=[("state", "=", "ALIVE")]):
        needs = actor.required_resources or {}
        if not actor.placement_group_id and (needs.get("CPU") or needs.get("GPU")):
            holders.append(_describe_actor(actor, job_id))
    return holders


def wait_message(request: PendingRequest, waited_s: float, address: str, job_id: str) -> str:
    """One line: what waits and for what, what the cluster has, who holds the rest."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    have = ", ".join(f"{name} {total[name]:g} ({free.get(name, 0.0):g} free)"
                     for name in ("CPU", "GPU") if total.get(name))
    holders = resource_holders(address, job_id)
    return (f"[adaray] waited {waited_s:.0f} s for resources: {request.text} cannot be placed; "
            f"the cluster has {have or 'no CPU'} on {nodes} node{'s' * (nodes != 1)}; held by: "
            f"{'; '.join(holders) or 'nothing adaray can see'}. "
            f"({WAIT_LIMIT_ENV} sets when this is reported.)")


class ResourceWaitWatch:
    """A daemon thread that reports this job's requests waiting longer than `limit_s`.

    Each request is reported once per wait; `on_wait(message)` replaces the default print. The
    thread ends when Ray is shut down or `stop()` is called; State API errors are skipped.
    """

    def __init__(self, limit_s: float, on_wait: Callable[[str], None] | None = None,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        import ray

        self.limit_s, self.interval_s = limit_s, interval_s
        self.on_wait = on_wait or (lambda message: print(message, flush=True))
        context = ray.get_runtime_context()
        self.address, self.job_id = context.gcs_address, context.get_job_id()
        self.waiting: dict[str, tuple[float, float, bool]] = {}  # key -> (since, seen, told)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adaray-resource-wait",
                                        daemon=True)

    def start(self) -> ResourceWaitWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll(self, now: float | None = None) -> list[str]:
        """One look: update the waits, report those past the limit; returns the messages."""
        now = time.monotonic() if now is None else now
        messages = []
        for request in pending_requests(self.address, self.job_id):
            since, _, told = self.waiting.get(request.key, (now, now, False))
            if not told and now - since >= self.limit_s:
                message = wait_message(request, now - since, self.address, self.job_id)
                messages.append(message)
                self.on_wait(message)
                told = True
            self.waiting[request.key] = (since, now, told)
        self.waiting = {k: v for k, v in self.waiting.items() if now - v[1] <= SAME_WAIT_GAP_S}
        return messages

    def _run(self) -> None:
        import ray

        while not self._stop.wait(self.interval_s):
            if not ray.is_initialized():
                return
            with contextlib.suppress(Exception):  # the State API may be briefly unavailable
                self.poll()


_watch: ResourceWaitWatch | None = None


def watch_resource_waits(limit_s: float, on_wait: Callable[[str], None] | None = None
                         ) -> ResourceWaitWatch:
    """Start this process's watch, replacing an earlier one; see `ResourceWaitWatch`."""
    global _watch
    if _watch is not None:
        _watch.stop()
    _watch = ResourceWaitWatch(limit_s, on_wait).start()
    return _watch


# ----------------------------------------------------------------------------- placement groups


def job_placement_groups(states: tuple[str, ...] = ("PENDING", "CREATED", "RESCHEDULING")
                         ) -> dict[str, Any]:
    """This job's placement groups in `states`, by id (State API)."""
    import ray
    from ray.util.state import list_placement_groups

    context = ray.get_runtime_context()
    groups = list_placement_groups(address=context.gcs_address, detail=True, filters=[
        ("creator_job_id", "=", context.get_job_id())])
    return {g.placement_group_id: g for g in groups if g.state in states}


@contextlib.contextmanager
def placement_groups_released(run: str, grace_s: float = RELEASE_GRACE_S) -> Iterator[None]:
    """On leaving the block, remove the placement groups this job created in it that are still
    there after `grace_s` (Ray's own clean-up goes first), saying which and why."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    before = set(job_placement_groups())
    try:
        yield
    finally:
        if ray.is_initialized():
            try:
                deadline = time.monotonic() + grace_s
                while (left := {i: g for i, g in job_placement_groups().items()
                                if i not in before}) and time.monotonic() < deadline:
                    time.sleep(0.5)
                job_id = ray.get_runtime_context().get_job_id()
                for group_id, group in left.items():
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
                    print(f"[adaray] removed {_describe_group(group, job_id)}, left by {run} "
                          f"after it ended", flush=True)
            except Exception as exc:  # a failed check must not fail the run
                print(f"[adaray] could not check {run}'s placement groups: {exc}", flush=True)

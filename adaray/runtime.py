"""Process-level settings that make PyTorch on CPU fast; called by entry points, not on import.

glibc's malloc serves large blocks with mmap and returns freed memory to the kernel, so every
step of a big forward/backward pass page-faults its activations in again (MODEL.md, "CPU
performance notes": ~40 % of CPU time). `configure_allocator` keeps freed memory in the heap.

A thread other than the main one allocates from its own arena, whose heaps are at most 64 MiB
(larger blocks are mmap-ed there). Ray Train runs the training loop in such a thread, so
`init_ray` starts every worker of the job with `ALLOCATOR_ENV`: the same settings as
environment variables, plus one arena for all threads (MALLOC_ARENA_MAX=1).

Several Ray instances may run on one host (two `adaray` commands side by side each start their
own). Ray's State API finds "the" instance by scanning the host when RAY_ADDRESS is unset, and
fails when it finds more than one; Ray Train's placement-group cleaner is such a caller. So every
process of an instance adaray starts or joins knows its own address: `init_ray` sets RAY_ADDRESS
in the driver, and every worker of the job runs `setup_worker` when it starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The logger of Ray Data's streaming executor ("Dataset ... execution finished in ... seconds").
RAY_DATA_EXECUTOR_LOGGER = "ray.data._internal.execution.streaming_executor"

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NO_TRIM = 2**31 - 1

# The same settings as environment variables, read by glibc when a process starts.
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                 "MALLOC_TRIM_THRESHOLD_": str(_NO_TRIM)}


@functools.cache
def configure_allocator() -> bool:
    """Tell glibc malloc to stop mmap-ing and trimming; True when applied (glibc only).

    Freed memory is then reused by the next step instead of being faulted in again. The arena
    limit cannot be set this way once threads exist; processes that Ray starts get
    `ALLOCATOR_ENV` instead (`init_ray`).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NO_TRIM))


def setup_worker() -> None:
    """Worker setup hook of adaray's jobs. RAY_ADDRESS is this worker's own cluster, so that
    State API calls in it (Ray Train's placement-group cleaner among them) cannot pick another
    instance. Ray Data's executors in it (the split coordinator that feeds the Train workers
    among them) log warnings and errors, but no INFO line for every pass over a dataset."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger(RAY_DATA_EXECUTOR_LOGGER).setLevel(logging.WARNING)


def ray_runtime_env(env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """A job runtime env: `ALLOCATOR_ENV` (plus `env_vars`) in every worker's environment, and
    `setup_worker` run by every worker (Ray's own Train, Tune and Serve actors included).

    Allocator variables this process already has (e.g. from `ray job submit --runtime-env-json`)
    are left to it: they reach the workers anyway, and Ray refuses to merge the same key twice.
    """
    allocator = {k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ}
    return {"env_vars": {**allocator, **(env_vars or {})},
            "worker_process_setup_hook": f"{__name__}.{setup_worker.__name__}"}


def local_ray_instances() -> dict[str, str]:
    """The Ray instances running on this host: GCS address -> the command that started it
    ("" where unknown). Found as Ray finds them, by the `--gcs-address=` of their processes."""
    found: dict[str, str] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            address = next((a[len(b"--gcs-address="):].decode() for a in argv
                            if a.startswith(b"--gcs-address=")), None)
            if address is None or found.get(address):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found[address] = _command_line(parent) if parent > 1 else ""
        except (OSError, ValueError, IndexError):
            continue
    return found


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if len(words) > 1 and Path(words[0]).name.startswith("python"):
        words = words[1:]  # `python script.py ...` reads as `script.py ...`
    if words:
        words[0] = Path(words[0]).name
    return f"pid {pid}: {' '.join(' '.join(words).split())}"[:120]


def _announce_separate_instance(others: dict[str, str], auth: str) -> None:
    """One line: this command starts its own Ray beside the others, and how to join one
    (`auth`: what joining needs besides RAY_ADDRESS)."""
    named = ", ".join(f"{address} (started by {starter})" if starter else address
                      for address, starter in sorted(others.items()))
    first = min(others)
    which = "another Ray instance runs" if len(others) == 1 else "other Ray instances run"
    print(f"[adaray] {which} on this host: {named}; starting a separate one, which shares this "
          f"machine's CPUs. To run inside one instead: RAY_ADDRESS={first} {auth}adaray ...",
          file=sys.stderr, flush=True)


_pinned_address: str | None = None  # the RAY_ADDRESS init_ray set in this process


def init_ray(env_vars: dict[str, str] | None = None, *,
             on_resource_wait: Callable[[str], None] | None = None, **kwargs: Any) -> None:
    """Connect to Ray unless connected: RAY_ADDRESS, else a cluster started on this host with
    `ray start`, else a new local one (saying so when other instances run on this host).

    The job's workers start with `ray_runtime_env(env_vars)`; RAY_ADDRESS names the instance
    in this process from then on. A watch reports requests of this job that wait for resources
    longer than ADARAY_RESOURCE_WAIT_S (default 120 s), calling `on_resource_wait(message)`
    instead of printing when given (see `adaray.ray_state`).
    """
    import ray

    from adaray.ray_state import wait_limit_s, watch_resource_waits

    global _pinned_address
    if ray.is_initialized():
        return
    limit_s = wait_limit_s()  # a bad ADARAY_RESOURCE_WAIT_S fails before Ray starts
    if _pinned_address is not None and os.environ.get("RAY_ADDRESS") == _pinned_address:
        del os.environ["RAY_ADDRESS"]  # set here for an instance this process has shut down
    _pinned_address = None
    joining = bool(kwargs.get("address") or os.environ.get("RAY_ADDRESS"))
    before = {} if joining else local_ray_instances()
    # Ray starts token-authenticated unless told otherwise (and then sets RAY_AUTH_MODE here).
    auth = "" if "RAY_AUTH_MODE" in os.environ else "RAY_AUTH_MODE=token "
    ray.init(runtime_env=ray_runtime_env(env_vars), **kwargs)
    address = ray.get_runtime_context().gcs_address
    others = {a: starter for a, starter in before.items() if a != address}
    if others and address not in before:  # started here, not joined (`ray start` clusters)
        _announce_separate_instance(others, auth)
    if not os.environ.get("RAY_ADDRESS"):
        _pinned_address = os.environ["RAY_ADDRESS"] = address
    watch_resource_waits(limit_s, on_resource_wait)

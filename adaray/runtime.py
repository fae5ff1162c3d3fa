"""Process-level settings that make PyTorch on CPU fast; called by entry points, not on import.

glibc's malloc serves large blocks with mmap and returns freed memory to the kernel, so every
step of a big forward/backward pass page-faults its activations in again (MODEL.md, "CPU
performance notes": ~40 % of CPU time). `configure_allocator` keeps freed memory in the heap.

A thread other than the main one allocates from its own arena, whose heaps are at most 64 MiB
(larger blocks are mmap-ed there). Ray Train runs the training loop in such a thread, so
`init_ray` starts every worker of the job with `ALLOCATOR_ENV`: the same settings as
environment variables, plus one arena for all threads (MALLOC_ARENA_MAX=1).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

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


def ray_runtime_env(env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """A job runtime env with `ALLOCATOR_ENV` (plus `env_vars`) in every worker's environment.

    Allocator variables this process already has (e.g. from `ray job submit --runtime-env-json`)
    are left to it: they reach the workers anyway, and Ray refuses to merge the same key twice.
    """
    allocator = {k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ}
    return {"env_vars": {**allocator, **(env_vars or {})}}


def init_ray(env_vars: dict[str, str] | None = None, **kwargs: Any) -> None:
    """Connect to Ray unless connected: RAY_ADDRESS, else a cluster started on this host, else
    a new local one; the job's workers start with `ray_runtime_env(env_vars)`."""
    import ray

    if not ray.is_initialized():
        ray.init(runtime_env=ray_runtime_env(env_vars), **kwargs)

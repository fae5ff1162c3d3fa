"""Process-level settings that make PyTorch on CPU fast; called by entry points, not on import.

glibc's malloc serves large blocks with mmap and returns freed memory to the kernel, so every
step of a big forward/backward pass page-faults its activations in again (MODEL.md, "CPU
performance notes": ~40 % of CPU time). `configure_allocator` keeps freed memory in the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def configure_allocator() -> bool:
    """Tell glibc malloc to stop mmap-ing and trimming; True when applied (glibc only).

    Equivalent to MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large> in the environment; freed
    memory is then reused by the next step instead of being faulted in again.
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
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))

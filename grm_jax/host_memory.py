"""Host memory for XLA on the CPU.

As glibc's malloc comes, every buffer above its mmap threshold (at most 32 MiB) is a fresh `mmap`
that `free` hands straight back to the kernel, and every buffer of a thread's arena can be trimmed
away when freed. A jitted train step on the CPU allocates and frees the same few hundred MiB of
temporaries at every call, so each step faults all of those pages in again: on the demo's
pretraining step, about 92,000 page faults a step, and a fifth of the run's CPU time spent in the
kernel (configs/demo/EXPERIMENTS.md row Y). `keep_freed_memory` sets malloc to serve
every buffer from one heap and to keep what is freed there for the next step.

It is the `grm-jax` command's choice for runs where JAX uses the CPU alone (the library does not
change a process's allocator when imported); GRM_JAX_MALLOC=system leaves malloc as it comes.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Free memory at the top of the heap is given back to the kernel only above this (2 GiB - 1).
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Has glibc's malloc keep freed memory for reuse: one arena for all threads, no buffer by
    its own `mmap`, the heap trimmed only when 2 GiB of it lie free. Call it before JAX runs its
    first computation (threads that already have an arena keep it). Returns whether malloc took
    the settings: False on a platform without glibc's `mallopt`, or with GRM_JAX_MALLOC=system.
    Changes no result, only how fast host buffers come; the heap keeps its peak size."""
    if os.environ.get("GRM_JAX_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))

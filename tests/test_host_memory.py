"""`grm-jax` on a CPU-only run keeps freed host memory for reuse (grm_jax.host_memory)."""

import ctypes
import importlib.util
import os
import subprocess
import sys

import pytest

from grm_jax import topology

# Allocates, writes and frees 100 MiB through malloc twice; prints the page faults of the second time.
REUSE = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def write_and_free():
    p = libc.malloc(100 * 2**20)
    ctypes.memset(p, 1, 100 * 2**20)
    libc.free(p)
write_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
write_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _python(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRM_JAX_MALLOC"} | env_vars
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def _has_mallopt() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    except OSError:
        return False


def _huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallopt(), reason="glibc's mallopt is not here")
def test_a_freed_buffer_comes_back_without_page_faults():
    plain = _python(REUSE)
    kept = _python("from grm_jax.host_memory import keep_freed_memory\nassert keep_freed_memory()\n" + REUSE)
    assert plain.returncode == 0 and kept.returncode == 0, plain.stderr + kept.stderr
    assert int(kept.stdout) < 1_000
    # As malloc comes, the 100 MiB are a fresh mmap each time: every 4 KiB page faults in again
    # (unless the kernel backs every fresh mapping with 2 MiB pages).
    if not _huge_pages_always():
        assert int(plain.stdout) > 20_000


def test_the_opt_out_leaves_malloc_as_it_comes():
    run = _python("from grm_jax.host_memory import keep_freed_memory\nprint(keep_freed_memory())\n" + REUSE,
                  GRM_JAX_MALLOC="system")
    assert run.returncode == 0, run.stderr
    changed, faults = run.stdout.split()
    assert changed == "False"
    if _has_mallopt() and not _huge_pages_always():
        assert int(faults) > 20_000


@pytest.mark.parametrize("platforms, cpu_only", [("cpu", True), ("cpu,tpu", False), ("cuda", False),
                                                 (" cpu ", True)])
def test_jax_uses_cpu_only_reads_the_named_platforms(platforms, cpu_only):
    import jax

    saved = jax.config.jax_platforms
    jax.config.update("jax_platforms", platforms)
    try:
        assert topology.jax_uses_cpu_only() is cpu_only
    finally:
        jax.config.update("jax_platforms", saved)


def test_a_host_with_libtpu_but_no_chip_counts_as_cpu_only_once_the_cli_has_said_so():
    """The CLI's order: `cpu_only_without_tpu`, then `jax_uses_cpu_only` decides the allocator."""
    from jax._src import hardware_utils

    if importlib.util.find_spec("libtpu") is None or hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        pytest.skip("needs libtpu installed on a host without a TPU chip (the test extra on a CPU host)")
    run = _python("from grm_jax.topology import cpu_only_without_tpu, jax_uses_cpu_only\n"
                  "before = jax_uses_cpu_only()\ncpu_only_without_tpu()\nprint(before, jax_uses_cpu_only())",
                  JAX_PLATFORMS="")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]

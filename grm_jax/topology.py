"""Abstract TPU topologies from libtpu (no chip needed: JAX_PLATFORMS=cpu is enough), and meshes
over their devices, for compiling a run's programs with XLA's TPU compiler (`grm_jax.aot`)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import tempfile

from jax.sharding import Mesh

from grm_jax import flops as F
from grm_jax.sharding import make_mesh

LIBTPU_HINT = ("compiling for a TPU topology needs libtpu, which runs on a CPU-only host: "
               "pip install 'grm-jax[tpu]' (or: pip install libtpu)")


class TopologyError(RuntimeError):
    """The topology cannot be had (no libtpu, or a name libtpu does not know)."""


@contextlib.contextmanager
def quiet_stderr():
    """libtpu writes start-up warnings meant for a real TPU VM to fd 2; keep them unless it fails."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield f
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _accelerator_plugin() -> bool:
    """Whether a PJRT plugin (a GPU's, or another accelerator's) is installed for JAX."""
    return bool(importlib.util.find_spec("jax_plugins") or importlib.metadata.entry_points(group="jax_plugins"))


def jax_uses_cpu_only() -> bool:
    """Whether JAX will run on the CPU alone: its platforms (JAX_PLATFORMS, or the setting
    `cpu_only_without_tpu` makes) name the CPU only, or none are named and neither libtpu nor an
    accelerator plugin is installed."""
    import jax

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or ""
    if platforms:
        return {p.strip() for p in platforms.split(",") if p.strip()} == {"cpu"}
    return importlib.util.find_spec("libtpu") is None and not _accelerator_plugin()


def cpu_only_without_tpu() -> bool:
    """Tells JAX to use the CPU alone on a host where libtpu is installed (`grm-jax[tpu]`, for
    the TPU compiler) but there is no TPU chip and no other accelerator plugin: otherwise JAX
    starts libtpu there, which prints TPU-VM metadata errors to stderr at every start. An explicit
    JAX_PLATFORMS is left alone, and so is any host with a chip or a GPU plugin. Call it before
    JAX's first use of a device; returns whether it changed the setting."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return False
    if _accelerator_plugin():
        return False  # a GPU (or other) PJRT plugin: JAX must still look for its devices
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    except Exception:  # a private helper of JAX's: if it moves, change nothing
        return False
    if chips:
        return False
    import jax

    jax.config.update("jax_platforms", "cpu")
    return True


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: tuple
    chip: str                  # a grm_jax.flops.CHIPS name
    devices_per_chip: int

    @property
    def per_device(self) -> F.Chip:
        """The chip's figures per JAX device (a v4 chip shows two)."""
        c = F.CHIPS[self.chip]
        n = self.devices_per_chip
        return F.Chip(c.peak_flops / n, c.hbm_bandwidth / n, c.hbm_bytes // n, c.device_kinds)


def get_topology(name: str) -> Topology:
    """The abstract devices of a TPU topology such as 'v5p:4x4x4', 'v5e:2x2' or 'v6e:2x4'."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        raise TopologyError(LIBTPU_HINT)
    from jax.experimental import topologies

    # Nothing runs on a chip here, so several compiling processes need not exclude each other.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with quiet_stderr() as err:
        try:
            desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
        except Exception as e:  # libtpu raises XlaRuntimeError / ValueError for unknown names
            err.seek(0)
            raise TopologyError(f"topology {name!r}: {str(e).splitlines()[0]} (expected e.g. v5p:4x4x4, "
                                "v5e:2x2, v6e:2x4, v4:2x2x1)") from None
    devices = tuple(desc.devices)
    chip = F.chip_name(devices[0].device_kind)
    if chip is None:
        raise TopologyError(f"topology {name!r}: unknown TPU kind {devices[0].device_kind!r}")
    dims = name.partition(":")[2]
    chips = math.prod(int(d) for d in dims.split("x")) if dims else len(devices)
    return Topology(name, devices, chip, max(1, len(devices) // chips))


def topology_mesh(topo: Topology, mesh_shape: dict) -> Mesh:
    if math.prod(mesh_shape.values()) != len(topo.devices):
        raise ValueError(f"mesh {mesh_shape} has {math.prod(mesh_shape.values())} devices; topology "
                         f"{topo.name} has {len(topo.devices)}")
    return make_mesh(**mesh_shape, devices=list(topo.devices))



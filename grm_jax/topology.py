"""Abstract TPU topologies from libtpu (no chip needed: JAX_PLATFORMS=cpu is enough), and meshes
over their devices, for compiling a run's programs with XLA's TPU compiler (`grm_jax.aot`)."""

from __future__ import annotations

import contextlib
import dataclasses
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



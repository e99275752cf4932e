"""Device mesh and the logical-axis rules table.

Model code names logical axes (`embed`, `heads`, ...). This module alone maps them to the mesh
axes `data`, `fsdp` and `tensor`. The mesh is always an explicit argument.

A logical axis whose mesh axes do not divide the dimension is left unsharded on those mesh axes
(for example 2 KV heads on a tensor axis of 4): replication is always correct, and the resolver
reports it through `unsharded_dims` so callers can log it.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes, in priority order. `None` means replicated.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
)

Names = Sequence[str | None]


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """Parses 'data=1,fsdp=-1,tensor=2' into a dict; -1 means 'all remaining devices'."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, size = part.partition("=")
        if name not in MESH_AXES:
            raise ValueError(f"--mesh: unknown axis {name!r} in {spec!r}; axes are {MESH_AXES}")
        if name in out:
            raise ValueError(f"--mesh: axis {name!r} given twice in {spec!r}")
        try:
            out[name] = int(size)
        except ValueError:
            raise ValueError(f"--mesh: size of {name!r} must be an integer, got {size!r}") from None
        if out[name] < 1 and out[name] != -1:
            raise ValueError(f"--mesh: size of {name!r} must be >= 1 or -1 (the remaining devices), "
                             f"got {out[name]}")
    return out


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices).

    At most one size may be -1; it takes the devices the others leave.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if any(v == 0 or v < -1 for v in sizes.values()) or len(devices) % fixed:
        raise ValueError(f"mesh {sizes} does not fit {len(devices)} devices")
    if free:
        sizes[free[0]] = len(devices) // fixed
    shape = tuple(sizes[a] for a in MESH_AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"have {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except (ValueError, NotImplementedError):
        # A logical axis that is no product of physical axes (data=8 on a 4x4x4 TPU slice):
        # split a physical axis between two mesh axes rather than refuse the mesh.
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=auto)


DECODE_LAYOUTS = ("tensor", "train")


def decode_mesh(mesh: Mesh, num_heads: int, num_kv_heads: int, layout: str = "tensor") -> Mesh:
    """The mesh the sampler decodes on: the devices of `mesh`, in the same order, as a tensor-
    parallel view.

    On an FSDP mesh each device holds 1/fsdp of every weight, so each decode step (one token per
    row) all-gathers every layer's weights: it moves several times the weights a device needs
    (figures for the paper configs in the README). The "tensor" layout folds fsdp x tensor into one tensor
    axis of size t (the largest divisor of fsdp x tensor that divides both head counts, so every
    attention and MLP weight and the KV cache split by heads without replication) and the rest
    into data. A step then reads only each device's own 1/t of the weights; the params are
    resharded once per sampling call. "train" decodes on `mesh` itself.
    """
    shape = decode_mesh_shape(dict(mesh.shape), num_heads, num_kv_heads, layout)
    if shape == dict(mesh.shape):
        return mesh
    grid = np.asarray(mesh.devices).reshape(tuple(shape[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES, axis_types=mesh.axis_types)


def decode_mesh_shape(shape: dict[str, int], num_heads: int, num_kv_heads: int, layout: str = "tensor") -> dict:
    """`decode_mesh`'s axis sizes for a mesh of axis sizes `shape` (no devices needed)."""
    if layout not in DECODE_LAYOUTS:
        raise ValueError(f"decode layout must be one of {DECODE_LAYOUTS}, got {layout!r}")
    if layout == "train" or shape["fsdp"] == 1:
        return dict(shape)
    width = shape["fsdp"] * shape["tensor"]
    t = max(d for d in range(1, width + 1) if width % d == 0 and num_heads % d == 0 and num_kv_heads % d == 0)
    return {"data": shape["data"] * width // t, "fsdp": 1, "tensor": t}


def mesh_from_spec(spec: str | None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from a '--mesh' string such as 'fsdp=-1,tensor=2' (default: fsdp over all)."""
    return make_mesh(**parse_mesh_spec(spec or ""), devices=devices)


def logical_to_spec(names: Names, shape: Sequence[int], mesh: Mesh,
                    rules: Iterable = RULES) -> P:
    """The PartitionSpec for an array of `shape` whose axes carry logical `names`.

    A mesh axis is used at most once per array, and only where it divides the dimension.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule")
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        for axis in axes:
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size):
                continue
            chosen.append(axis)
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*out)


def named_sharding(names: Names, shape: Sequence[int], mesh: Mesh, rules: Iterable = RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules: Iterable = RULES):
    """NamedShardings for a pytree, given a matching pytree of logical names (tuples)."""
    return jax.tree.map(lambda names, a: named_sharding(names, a.shape, mesh, rules),
                        logical_tree, abstract_tree, is_leaf=_is_names)


def unsharded_dims(names: Names, shape: Sequence[int], mesh: Mesh, rules: Iterable = RULES) -> list[str]:
    """Logical axes whose rule names a mesh axis of size > 1 that could not be applied."""
    spec = logical_to_spec(names, shape, mesh, rules)
    table = dict(rules)
    missed = []
    for name, got in zip(names, spec):
        target = table.get(name) if name else None
        want = (target,) if isinstance(target, str) else tuple(target or ())
        want = [a for a in want if mesh.shape[a] > 1]
        have = (got,) if isinstance(got, str) else tuple(got or ())
        if want and len(have) < len(want):
            missed.append(name)
    return missed


def constrain(x: jax.Array, names: Names, mesh: Mesh | None, rules: Iterable = RULES) -> jax.Array:
    """Sharding constraint on an activation by logical names; identity when no mesh is given."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(names, x.shape, mesh, rules))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Sharding for a [B, T, ...] batch array: batch over (data, fsdp)."""
    return named_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)


def bytes_per_device(abstract_tree, shardings) -> int:
    """Largest per-device byte count of a sharded pytree (from shapes alone)."""
    totals: dict[int, int] = {}
    for a, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
        shard_shape = s.shard_shape(a.shape)
        nbytes = int(np.prod(shard_shape)) * np.dtype(a.dtype).itemsize
        for d in s.device_set:
            totals[d.id] = totals.get(d.id, 0) + nbytes
    return max(totals.values()) if totals else 0


def follow_params(tree, params, per_param, default, is_leaf=None):
    """`tree` (an optimizer state, say) with each leaf replaced by the `per_param` value of the
    param it follows (the param whose path ends its path, with the same shape: Adam's moments),
    else by `default` (step counts). `per_param` has the structure of `params`."""
    def keys(path):
        return tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)

    shapes = {keys(path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    values = {keys(path): v for path, v in jax.tree_util.tree_flatten_with_path(per_param, is_leaf=is_leaf)[0]}

    def pick(path, leaf):
        k = keys(path)
        for i in range(len(k)):
            if shapes.get(k[i:]) == tuple(leaf.shape):
                return values[k[i:]]
        return default
    return jax.tree_util.tree_map_with_path(pick, tree)


def _is_names(x) -> bool:
    return type(x) is tuple and all(isinstance(n, (str, type(None))) for n in x)

"""Device mesh from the config, and the one table mapping logical axis names onto mesh axes.

Parameters carry logical axes (`zoo.layers.param`); `RULES` maps each name to a mesh axis.
A dimension whose size the mesh axis does not divide stays replicated (so e.g. 2 KV heads on a
4-way tensor axis still work), and a mesh axis is used at most once per array.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from zoo.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "kv": (),
    "conv": (),
    "layers": (),
}


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices cannot be split with fsdp/tensor/data sizes "
                              f"{tuple(sizes)}; choose sizes whose product divides {num_devices}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh: data*fsdp*tensor = {math.prod(sizes)} but {num_devices} devices are present; "
                          "set one of mesh.data / mesh.fsdp / mesh.tensor to -1 to take the rest")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> jax.sharding.Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
    """PartitionSpec for an array with the given logical axis names under RULES."""
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        chosen = []
        for mesh_axis in RULES.get(name, ()) if name is not None else ():
            if mesh_axis in used or mesh.shape[mesh_axis] == 1:
                continue
            if size % (math.prod(mesh.shape[a] for a in chosen) * mesh.shape[mesh_axis]):
                continue
            chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return P(*spec)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
    """Shards dimension `batch_dim` of an `ndim`-d batch array over data x fsdp."""
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_global_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, batch_dim: int = 0) -> dict:
    """Places a global host batch (identical on every process) onto the mesh, sharded over the
    batch axes. Each process only materialises the shards its own devices hold."""
    out = {}
    for key, value in batch.items():
        sharding = batch_sharding(mesh, value.ndim, batch_dim)
        out[key] = jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
    return out


def process_batch_rows(mesh: jax.sharding.Mesh, batch_size: int, grad_accum: int = 1) -> np.ndarray:
    """The rows (positions in the global batch, sorted) that this process's devices hold when a
    [batch_size, ...] batch is split into `grad_accum` micro-batches [grad_accum, batch_size /
    grad_accum, ...] sharded over the batch axes. One process: all of them."""
    micro = batch_size // grad_accum
    sharding = batch_sharding(mesh, 2, batch_dim=1)
    rows = set()
    for index in sharding.addressable_devices_indices_map((grad_accum, micro)).values():
        ms, js = range(grad_accum)[index[0]], range(micro)[index[1]]
        rows.update(m * micro + j for m in ms for j in js)
    return np.array(sorted(rows), np.int64)


def put_process_batch(local: dict[str, np.ndarray], rows: np.ndarray, mesh: jax.sharding.Mesh,
                      batch_size: int, grad_accum: int = 1) -> dict:
    """Global [grad_accum, batch_size / grad_accum, ...] arrays from this process's rows only.

    local: dict of [len(rows), ...] arrays, row i being position rows[i] of the global batch (as
    `process_batch_rows` lists them). Each process passes its own rows; together they form the
    global batch, sharded over the batch axes like `put_global_batch(..., batch_dim=1)`."""
    micro = batch_size // grad_accum
    where = {int(r): i for i, r in enumerate(rows)}
    out = {}
    for key, value in local.items():
        shape = (grad_accum, micro) + value.shape[1:]
        sharding = batch_sharding(mesh, len(shape), batch_dim=1)

        def shard(index, v=value):
            ms, js = range(grad_accum)[index[0]], range(micro)[index[1]]
            picks = [where[m * micro + j] for m in ms for j in js]
            return v[picks].reshape((len(ms), len(js)) + v.shape[1:])[(slice(None), slice(None)) + tuple(index[2:])]

        out[key] = jax.make_array_from_callback(shape, sharding, shard)
    return out

"""Parameters that carry logical axis names, so one rules table can shard every model.

Each parameter is an `nnx.Param` with a `logical_axes` tuple (one name per dimension, e.g.
`("embed", "mlp")`); `zoo.training.sharding` maps the names onto mesh axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float) -> nnx.Param:
    """A float32 parameter drawn from N(0, std^2), annotated with logical axes."""
    if len(shape) != len(axes):
        raise ValueError(f"parameter of shape {shape} needs {len(shape)} logical axes, got {axes}")
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, logical_axes=tuple(axes))


def constant_param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
    """A float32 parameter with a given initial value, annotated with logical axes."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim != len(axes):
        raise ValueError(f"parameter of shape {value.shape} needs {value.ndim} logical axes, got {axes}")
    return nnx.Param(value, logical_axes=tuple(axes))

"""Attentional biases (Miras' name for the per-token inner objective), summed over tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.spec import MemorySpec


def inner_loss(spec: MemorySpec, out: jax.Array, v: jax.Array) -> jax.Array:
    """Sum over tokens of l_i for `out, v: [n, dv]`.

    l2: ||M(k_i) - v_i||^2, a sum over features (Titans Eq. 12; gradient 2 (M(k) - v)).
    dot: -<M(k_i), v_i> (Hebbian; for a matrix memory this is linear attention).
    """
    if spec.objective == "l2":
        return jnp.sum(jnp.square(out - v))
    return -jnp.sum(out * v)

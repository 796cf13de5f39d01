"""Attentional biases (Miras' name for the per-token inner objective), summed over tokens, as
registered parts (zoo.memory.parts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.parts import Objective, objective, register_objective
from zoo.memory.spec import MemorySpec

register_objective(Objective(
    "l2", lambda out, v, gates, spec: jnp.sum(jnp.square(out - v)), gradient_depends_on_weights=True,
    doc="||M(k_i) - v_i||^2 summed over features (Titans Eq. 12; gradient 2 (M(k) - v))"))
register_objective(Objective(
    "dot", lambda out, v, gates, spec: -jnp.sum(out * v), gradient_depends_on_weights=False,
    doc="-<M(k_i), v_i> (Hebbian; for a matrix memory this is linear attention)"))


def inner_loss(spec: MemorySpec, out: jax.Array, v: jax.Array, gates: dict) -> jax.Array:
    """Sum over tokens of the spec's objective, `out, v: [n, dv]`; `gates`: {name: [n]}, at least
    the gates the objective declares."""
    part = objective(spec.objective)
    return part.loss(out, v, {name: gates[name] for name in part.gates}, spec)

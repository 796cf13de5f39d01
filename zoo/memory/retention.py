"""Retention (forgetting): per-token decays as log values, their in-chunk products in log space.

log l_t <= 0 is given per token ([T] scalar, or [T, dk] per key channel). Products of decays
are never formed by dividing cumulative products: beta_r / beta_j = exp(L_r - L_j) with L the
cumulative sum of log l, masked (j > r) before the exp (Titans spec §1.6, numerics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.spec import MemorySpec


def masked_exp_diff(cum: jax.Array) -> jax.Array:
    """`cum: [C, ...] -> [C, C, ...]` with out[r, j] = exp(cum[r] - cum[j]) for j <= r, else 0."""
    n = cum.shape[0]
    mask = jnp.tril(jnp.ones((n, n), bool)).reshape((n, n) + (1,) * (cum.ndim - 1))
    diff = cum[:, None] - cum[None, :]
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def decay_terms(log_retention: jax.Array) -> tuple[jax.Array, jax.Array]:
    """In-chunk decays: beta_r = prod_{j<=r} l_j (`[C]` or `[C, dk]`) and the lower-triangular
    D[r, j] = beta_r / beta_j (`[C, C]` or `[C, C, dk]`)."""
    cum = jnp.cumsum(log_retention, axis=0)
    return jnp.exp(cum), masked_exp_diff(cum)


def retain(spec: MemorySpec, weights: tuple[jax.Array, ...], log_retention: jax.Array) -> tuple[jax.Array, ...]:
    """One token's forgetting l_t W (channel decay scales the key rows of a matrix memory)."""
    if spec.retention == "none":
        return weights
    keep = jnp.exp(log_retention)
    if spec.retention == "channel":
        return (weights[0] * keep[:, None],)
    return tuple(w * keep for w in weights)

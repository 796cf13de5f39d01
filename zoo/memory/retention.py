"""Retention (forgetting) as registered parts (zoo.memory.parts): none, scalar and channel decays;
per-token decays as log values.

log l_t <= 0 is given per token ([T] scalar, or [T, dk] per key channel). Their in-chunk products
(`kernels.anchored_memory.chunked.decayed_terms`) are never formed by dividing cumulative products:
beta_r / beta_j = exp(L_r - L_j) with L the cumulative sum of log l, masked (j > r) before the exp
(Titans spec §1.6, numerics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.parts import Retention, register_retention, retention
from zoo.memory.spec import MemorySpec


register_retention(Retention("none", gate="none", apply=lambda weights, log_retention: weights,
                             doc="no forgetting"))
def scalar_decay(weights: tuple[jax.Array, ...], log_retention: jax.Array) -> tuple[jax.Array, ...]:
    """W <- l_t W for every layer, `log_retention`: [] (one decay per head and token)."""
    return tuple(w * jnp.exp(log_retention) for w in weights)


register_retention(Retention("scalar", gate="scalar", apply=scalar_decay,
                             doc="W <- l_t W, one l_t per head and token (Titans' 1 - alpha_t)"))
register_retention(Retention(
    "channel", gate="channel", matrix_only=True,
    apply=lambda weights, log_retention: (weights[0] * jnp.exp(log_retention)[:, None],),
    doc="W <- diag(l_t) W, one l_t per key channel (the rows of a matrix memory)"))


def retain(spec: MemorySpec, weights: tuple[jax.Array, ...], log_retention: jax.Array) -> tuple[jax.Array, ...]:
    """One token's forgetting (the spec's registered retention)."""
    return retention(spec.retention).apply(weights, log_retention)

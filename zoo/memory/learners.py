"""Inner optimisers: plain gradient descent, or momentum on the surprise (Titans Eq. 13-14).

Within a chunk every update is linear in the per-token gradients u_i, so a learner is fully
described by how u_i enters the momentum at position r (Titans spec §1.6):
    S_r = m_r S_a - sum_{i<=r} n[r, i] u_i,   with n[r, i] = rho_i prod_{j=i+1..r} mu_j.
Plain GD has no momentum state; its n is diag(rho) (the update is applied once, at its token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.retention import masked_exp_diff
from zoo.memory.spec import MemorySpec


def momentum_terms(spec: MemorySpec, lr: jax.Array, log_momentum: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array]:
    """`lr, log_momentum: [C]` -> (m_r = prod_{j<=r} mu_j `[C]`, n `[C, C]` lower-triangular)."""
    if not spec.has_momentum:
        return jnp.zeros_like(lr), jnp.diag(lr)
    cum = jnp.cumsum(log_momentum)
    return jnp.exp(cum), masked_exp_diff(cum) * lr[None, :]


def learner_step(spec: MemorySpec, momentum, grads, lr, log_momentum):
    """One token: returns (the update added to the retained weights, the new momentum)."""
    if not spec.has_momentum:
        return tuple(-lr * g for g in grads), momentum
    mu = jnp.exp(log_momentum)
    new_momentum = tuple(mu * s - lr * g for s, g in zip(momentum, grads, strict=True))
    return new_momentum, new_momentum

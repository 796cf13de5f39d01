"""Inner optimisers as registered parts (zoo.memory.parts): plain gradient descent, and momentum
on the surprise (Titans Eq. 13-14).

Within a chunk every update of a linear learner is linear in the per-token gradients u_i, so it
is fully described by how u_i enters the momentum at position r (Titans spec §1.6):
    S_r = m_r S_a - sum_{i<=r} n[r, i] u_i,   with n[r, i] = rho_i prod_{j=i+1..r} mu_j.
Plain GD has no momentum state; its n is diag(rho) (the update is applied once, at its token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.parts import Learner, learner, register_learner
from zoo.memory.retention import masked_exp_diff
from zoo.memory.spec import MemorySpec


def _gd_step(spec, momentum, grads, lr, log_momentum):
    return tuple(-lr * g for g in grads), momentum


def _gd_terms(lr, log_momentum):
    return jnp.zeros_like(lr), jnp.diag(lr)


def momentum_update(momentum, grads, lr, log_momentum):
    """S_t = mu_t S_{t-1} - rho_t u_t (one array per layer)."""
    mu = jnp.exp(log_momentum)
    return tuple(mu * s - lr * g for s, g in zip(momentum, grads, strict=True))


def _momentum_step(spec, momentum, grads, lr, log_momentum):
    new_momentum = momentum_update(momentum, grads, lr, log_momentum)
    return new_momentum, new_momentum


def _momentum_terms(lr, log_momentum):
    cum = jnp.cumsum(log_momentum)
    return jnp.exp(cum), masked_exp_diff(cum) * lr[None, :]


register_learner(Learner("gd", has_momentum=False, step=_gd_step, terms=_gd_terms,
                         doc="W_t = l_t W_{t-1} - rho_t u_t"))
register_learner(Learner("momentum", has_momentum=True, step=_momentum_step, terms=_momentum_terms,
                         doc="S_t = mu_t S_{t-1} - rho_t u_t, W_t = l_t W_{t-1} + S_t (Titans Eq. 13-14)"))


def momentum_terms(spec: MemorySpec, lr: jax.Array, log_momentum: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`lr, log_momentum: [C]` -> (m_r `[C]`, n `[C, C]` lower-triangular) of a linear learner."""
    part = learner(spec.learner)
    if not part.linear:
        raise ValueError(f"learner {spec.learner!r} is not linear in the gradients: it has no chunk terms")
    return part.terms(lr, log_momentum)


def learner_step(spec: MemorySpec, momentum, grads, lr, log_momentum):
    """One token: returns (the update added to the retained weights, the new momentum)."""
    return learner(spec.learner).step(spec, momentum, grads, lr, log_momentum)

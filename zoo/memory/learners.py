"""Inner optimisers as registered parts (zoo.memory.parts): plain gradient descent, and momentum
on the surprise (Titans Eq. 13-14), with the two head gates they read: the inner learning rate
"lr" and the momentum decay "log_momentum".

Within a chunk every update of a linear learner is linear in the per-token gradients u_i, so it
is fully described by how u_i enters the momentum at position r (Titans spec §1.6):
    S_r = m_r S_a - sum_{i<=r} n[r, i] u_i,   with n[r, i] = rho_i prod_{j=i+1..r} mu_j.
Plain GD has no momentum state; its n is diag(rho) (the update is applied once, at its token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.anchored_memory.chunked import learner_terms as chunk_learner_terms
from zoo.layers.gates import logit
from zoo.memory.parts import Buffer, Gate, Learner, learner, register_gate, register_learner
from zoo.memory.spec import MemorySpec


# rho_t = lr_max * sigmoid(z), starting at lr_init (Titans theta_t; spec §1.4)
register_gate(Gate("lr", bias=lambda cfg: logit(cfg.lr_init / cfg.lr_max) if cfg.lr_max > 0 else 0.0,
                   value=lambda z, cfg: cfg.lr_max * jax.nn.sigmoid(z), doc="rho_t = lr_max sigmoid(z)"))
# log mu_t = -softplus(-z) = log sigmoid(z), starting at momentum_init (Titans eta_t)
register_gate(Gate("log_momentum", bias=lambda cfg: logit(cfg.momentum_init),
                   value=lambda z, cfg: -jax.nn.softplus(-z), doc="log mu_t = log sigmoid(z)"))

MOMENTUM = Buffer("momentum")


def _gd_step(spec, buffers, grads, lr, gates):
    return tuple(-lr * g for g in grads), buffers


def _gd_terms(lr, gates):
    return chunk_learner_terms(lr, None)


def momentum_update(momentum, grads, lr, log_momentum):
    """S_t = mu_t S_{t-1} - rho_t u_t (one array per layer)."""
    mu = jnp.exp(log_momentum)
    return tuple(mu * s - lr * g for s, g in zip(momentum, grads, strict=True))


def _momentum_step(spec, buffers, grads, lr, gates):
    new_momentum = momentum_update(buffers["momentum"], grads, lr, gates["log_momentum"])
    return new_momentum, {"momentum": new_momentum}


def momentum_terms(lr, gates):
    return chunk_learner_terms(lr, gates["log_momentum"])


register_learner(Learner("gd", step=_gd_step, terms=_gd_terms, doc="W_t = l_t W_{t-1} - rho_t u_t"))
register_learner(Learner("momentum", step=_momentum_step, buffers=(MOMENTUM,), gates=("log_momentum",),
                         terms=momentum_terms,
                         doc="S_t = mu_t S_{t-1} - rho_t u_t, W_t = l_t W_{t-1} + S_t (Titans Eq. 13-14)"))


def learner_terms(spec: MemorySpec, lr: jax.Array, gates: dict) -> tuple[jax.Array, jax.Array]:
    """`lr: [C]`, the learner's gates `{name: [C]}` -> (m_r `[C]`, n `[C, C]` lower-triangular) of a
    learner with chunk terms (its momentum, or its update, is linear in the gradients)."""
    part = learner(spec.learner)
    if part.terms is None:
        raise ValueError(f"learner {spec.learner!r} is not linear in the gradients: it has no chunk terms")
    return part.terms(lr, gates)


def learner_step(spec: MemorySpec, buffers: dict, grads, lr, gates: dict):
    """One token: returns (the update added to the retained weights, the new buffers)."""
    return learner(spec.learner).step(spec, buffers, grads, lr, gates)

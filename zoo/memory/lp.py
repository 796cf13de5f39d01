"""The l_p attentional bias (Miras, Behrouz et al. 2025, Eq. 10-11: Moneta's objective), a
registered part.

With residual r = M(k) - v, Miras' bias is ||r||_p^p, whose gradient p sign(r) |r|^(p-1) needs
smoothing so the outer loop can differentiate through it (Remark 5). This part minimises the
smooth loss

    sum_j (r_j^2 + eps)^(p/2),    gradient  p r_j (r_j^2 + eps)^((p-2)/2),

which tends to p sign(r) |r|^(p-1) as eps -> 0 (r / sqrt(r^2 + eps) plays the role of the paper's
tanh(nu r)); p = `MemorySpec.lp_p` (`model.memory.lp_p`, default 3: Moneta's choice, the paper's
best), eps = 1e-6 (the paper's). Its gradient depends on W, like l2's.
"""

from __future__ import annotations

import jax.numpy as jnp

from zoo.memory.parts import Objective, register_objective

EPS = 1e-6


def lp_loss(out, v, gates=None, spec=None):
    """`out, v: [n, dv]` -> sum over tokens and features of (r^2 + eps)^(p/2), p = spec.lp_p (3 without a spec)."""
    p = 3.0 if spec is None else spec.lp_p
    r = out - v
    return jnp.sum((r * r + EPS) ** (p / 2))


register_objective(Objective("lp", lp_loss, gradient_depends_on_weights=True,
                             doc="smoothed ||M(k) - v||_p^p, p = lp_p (Miras / Moneta)"))

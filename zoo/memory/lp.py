"""The l_p attentional bias (Miras, Behrouz et al. 2025, Eq. 10-11: Moneta's objective), a
registered part.

With residual r = M(k) - v, Miras' bias is ||r||_p^p, whose gradient p sign(r) |r|^(p-1) needs
smoothing so the outer loop can differentiate through it (Remark 5). This part minimises the
smooth loss

    sum_j (r_j^2 + eps)^(p/2),    gradient  p r_j (r_j^2 + eps)^((p-2)/2),

which tends to p sign(r) |r|^(p-1) as eps -> 0 (r / sqrt(r^2 + eps) plays the role of the paper's
tanh(nu r)); p = 3 (Moneta's choice, the paper's best), eps = 1e-6 (the paper's). Its gradient
depends on W, like l2's. p is a module constant, as Huber's threshold is (docs/fidelity.md).
"""

from __future__ import annotations

import jax.numpy as jnp

from zoo.memory.parts import Objective, register_objective

P = 3.0
EPS = 1e-6


def lp_loss(out, v, gates=None):
    r = out - v
    return jnp.sum((r * r + EPS) ** (P / 2))


register_objective(Objective("lp", lp_loss, gradient_depends_on_weights=True,
                             doc="smoothed ||M(k) - v||_p^p, p = 3 (Miras / Moneta)"))

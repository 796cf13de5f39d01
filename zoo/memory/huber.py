"""The Huber attentional bias (Miras, Behrouz et al. 2025: Yaad's objective), a registered part.

Per feature, with residual r = M(k)_j - v_j and threshold delta = 1:
    h(r) = r^2                       |r| <= delta
    h(r) = delta (2 |r| - delta)     otherwise
so it equals the l2 objective ||M(k) - v||^2 for small residuals (gradient 2r) and caps each
feature's gradient at 2 delta for outliers. Its gradient depends on W, like l2's. Miras makes
delta data-dependent; a constant threshold is this part's simplification (docs/fidelity.md).
"""

from __future__ import annotations

import jax.numpy as jnp

from zoo.memory.parts import Objective, register_objective

DELTA = 1.0


def huber_loss(out, v):
    r = jnp.abs(out - v)
    return jnp.sum(jnp.where(r <= DELTA, r * r, DELTA * (2.0 * r - DELTA)))


register_objective(Objective("huber", huber_loss, gradient_depends_on_weights=True,
                             doc="Huber: l2 for |r| <= 1, linear beyond (Miras / Yaad)"))

"""Lattice's orthogonal state recurrence (arXiv 2504.05646; spec miras-lattice-trellis §2), a
registered retention: the memory's state S (one matrix `[m, d]`: m slots, rows here, of size d)
lives on the product of unit spheres, read as Ŝ = S with every slot normalised,

    view(S) = Diag(1 / ||s_i||) S,        y_t = Ŝ_t^T q_t  (q_t in R^m: a latent code, §2.3)

With the l2 objective ||Ŝ k_t - v_t||^2 (x_t = v_t, §2.1) and plain gradient descent, the
gradient taken through the view at unit slots is the Riemannian one: slot i receives
eta_t k_{t,i} (I - ŝ_i ŝ_i^T) e_t, e_t = v_t - Ŝ^T k_t, only the component orthogonal to itself
(§2.2, eta_t = 2 rho_t with this objective's sum convention), and the state is retracted onto
the spheres (renormalised) at the end of every chunk (§2.5). Gradients at the chunk start
(anchored semantics) give the tangent chunk form of §2.5,

    S_t = Ŝ_0 Diag(1 - sum_{i<=t} eta_i k_i * c_i) + sum_{i<=t} eta_i e_i k_i^T,   c_i = Ŝ_0^T e_i,

every query read through its own position's normalised state; at C = 1 it is the per-token
rule s_i <- normalize(ŝ_i + eta k_i (I - ŝ_i ŝ_i^T) e). The engine does this from the
declarations below (`Retention.riemannian`: gradients through the view's VJP, `engine.retract` at
chunk ends); no forgetting gate (forgetting is the renormalisation). A document starts from the
learned W_0 with its slots normalised. Reconstructed choices: docs/fidelity.md "Lattice".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.parts import Retention, register_retention

FLOOR = 1e-6  # a slot at zero reads as zero (and has a finite gradient)


def unit_slots(spec, weights):
    """Every slot (row of the one matrix `[m, d]`) scaled to unit norm."""
    del spec
    (w,) = weights
    return (w * jax.lax.rsqrt(jnp.maximum(jnp.sum(w * w, axis=-1, keepdims=True), FLOOR * FLOOR)),)


register_retention(Retention(
    "slot_norm", gate="none", apply=lambda weights, log_retention: weights, matrix_only=True,
    view=unit_slots, of_weights=unit_slots, riemannian=True,
    doc="Lattice: unit-norm slots (rows), Riemannian gradients through the view, renormalised every chunk"))

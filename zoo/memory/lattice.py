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
learned W_0 with its slots normalised.

The GLA chunk form (§2.5, retention `slot_norm_gla`) freezes the same errors and gates at the
chunk start, e_i = v_i - Ŝ_0^T k_i, c_i = Ŝ_0 e_i, a_i = 1 - eta_i k_i * c_i, and runs the linear
recurrence with per-slot decays instead,

    S_t = Diag(a_t) S_{t-1} + eta_t k_t e_t^T,   S_0 = Ŝ_0,

so gates above 1 (the normal case) compound inside a chunk; the reads and the chunk-end
retraction are the tangent form's. At C = 1 both forms are the per-token rule. The engine runs it
from `Retention.normal_gate` (`slot_gates` below). Reconstructed choices: docs/fidelity.md "Lattice".
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


def slot_gates(point, update) -> jax.Array:
    """a = 1 - <U_i, ŝ_i> per slot `[m]`: the update `U = eta k e^T` (`[m, d]`) has the normal part
    <U_i, ŝ_i> ŝ_i at the unit slots `point` (`[m, d]`), which the gate takes off the running slot
    instead; a_i = 1 - eta k_i <ŝ_i, e> = 1 - eta k_i c_i (§2.5)."""
    (s,), (u,) = point, update
    return 1.0 - jnp.sum(u * s, axis=-1)


register_retention(Retention(
    "slot_norm", gate="none", apply=lambda weights, log_retention: weights, matrix_only=True,
    view=unit_slots, of_weights=unit_slots, riemannian=True,
    doc="Lattice: unit-norm slots (rows), Riemannian gradients through the view, renormalised every chunk"))
register_retention(Retention(
    "slot_norm_gla", gate="none", apply=lambda weights, log_retention: weights, matrix_only=True,
    view=unit_slots, of_weights=unit_slots, riemannian=True, normal_gate=slot_gates,
    doc="Lattice's GLA chunk form: per-slot gates a_t = 1 - eta k_t * c_t from the chunk start scale the running "
        "slots (they compound inside a chunk), renormalised every chunk"))

"""Moneta's l_q retention (Miras, Behrouz et al. 2025, Eq. 24-25; spec §1.5.2 and M6), a
registered part: the memory's state is an accumulator A per weight matrix,

    A_t = alpha_t A_{t-1} - eta_t grad l(W_{t-1}; k_t, v_t),      W_t = A_t / ||A_t||_q^(q-2),

read (and differentiated) through the view W = A / n(A), n(A) = max(||A||_q^(q-2), 1e-6): one
scalar per matrix and head, floored so an empty accumulator reads as zero. A learned W_0 starts
the accumulator at A_0 = W_0 ||W_0||_q^((q-2)/(3-q)), whose view is W_0 again (spec M6; q != 3).
q = `MemorySpec.lq_q` (Moneta: 4). q = 2 makes the view the identity (the plain forget gate).
The decay alpha_t is the scalar forget gate ("lq"), or one decay per input channel of each layer
("lq_channel", Miras' channel-wise gates, spec §1.6). With gradients at the chunk start (anchored), the
view is taken of the anchor's accumulator and every read divides by its own token's normaliser,
as the spec's chunk form does (the chunk form materialises A at every position:
`kernels.anchored_memory.chunked.positionwise_read`).
"""

from __future__ import annotations

import jax.numpy as jnp

from zoo.memory.parts import Retention, register_retention
from zoo.memory.retention import channel_decay, scalar_decay

FLOOR = 1e-6


def q_norm_power(a, q: float, power: float):
    """||a||_q^power over every entry of one matrix, floored at FLOOR; its gradient is finite at
    a = 0 (the sum gets a tiny offset before the fractional power)."""
    return jnp.maximum((jnp.sum(jnp.abs(a) ** q) + 1e-30) ** (power / q), FLOOR)


def lq_view(spec, accumulators):
    """W = A / max(||A||_q^(q-2), floor) per matrix."""
    q = spec.lq_q
    return tuple(a / q_norm_power(a, q, q - 2.0) for a in accumulators)


def lq_of_weights(spec, weights):
    """A_0 with view W_0: W_0 ||W_0||_q^((q-2)/(3-q)) (an all-zero matrix stays zero)."""
    q = spec.lq_q
    return tuple(w * q_norm_power(w, q, (q - 2.0) / (3.0 - q)) for w in weights)


register_retention(Retention(
    "lq", gate="scalar", apply=scalar_decay,
    view=lq_view, of_weights=lq_of_weights,
    doc="Moneta: A <- l_t A on an accumulator read as W = A / ||A||_q^(q-2), q = lq_q"))
register_retention(Retention(
    "lq_channel", gate="channel", apply=channel_decay,
    view=lq_view, of_weights=lq_of_weights,
    doc="Moneta with Miras' channel-wise forget gate: A_l <- diag(l_t) A_l, one decay per input channel of each "
        "layer, read as W = A / ||A||_q^(q-2)"))

"""The elastic-net retention of Miras in its FTRL form (Behrouz et al. 2025, Eq. 23; spec
miras-lattice-trellis §1.4 item 3 and M8), a registered part: the state is an accumulator A,

    A_t = l_t A_{t-1} - eta_t grad l(W_{t-1}; k_t, v_t),      W_t = S_gamma(A_t),

with S_gamma(a) = sign(a) max(|a| - gamma, 0) the soft threshold ("hard forgetting": entries whose
accumulated evidence stays below gamma read as exactly zero) and l_t the forget gate ("soft
forgetting"; Eq. 23 itself has none: the gate starts at 1 - forget_init). gamma is
`MemorySpec.elastic_threshold` (the paper's eta/alpha, here a constant: docs/fidelity.md). The
memory reads and takes its gradients through the view S_gamma(A); a learned W_0 starts the
accumulator at A_0 = W_0 + gamma sign(W_0), whose view is W_0 again.
"""

from __future__ import annotations

import jax.numpy as jnp

from zoo.memory.parts import Retention, register_retention
from zoo.memory.retention import scalar_decay


def soft_threshold_view(spec, accumulators):
    """W = sign(A) max(|A| - gamma, 0) per entry."""
    gamma = spec.elastic_threshold
    return tuple(jnp.sign(a) * jnp.maximum(jnp.abs(a) - gamma, 0.0) for a in accumulators)


def accumulator_of_weights(spec, weights):
    """A_0 = W_0 + gamma sign(W_0): the soft threshold maps it back to W_0."""
    return tuple(w + spec.elastic_threshold * jnp.sign(w) for w in weights)


register_retention(Retention(
    "elastic_net", gate="scalar", apply=scalar_decay, view=soft_threshold_view, of_weights=accumulator_of_weights,
    doc="Miras Eq. 23 (FTRL elastic net): A <- l_t A on an accumulator read as the soft threshold S_gamma(A)"))

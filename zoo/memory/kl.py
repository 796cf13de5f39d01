"""Memora's KL retention (Miras, Behrouz et al. 2025, Eq. 21 and 27; spec miras-lattice-trellis
§1.5.4 and M7), a registered part, run in log-weights:

    W_t = c Softmax(alpha_t log W_{t-1} - eta_t grad l(W_{t-1}; k_t, v_t))     (per slice)

Softmax is shift-invariant per slice, so with a scalar alpha_t (one per head) the state can be the
logits L, with L_t = alpha_t L_{t-1} - eta_t grad l(W_{t-1}) and W_t = c Softmax(L_t): nothing ever
takes the log of a weight, and the rule is Eq. 27 exactly (M7; a decay that varied along the
slice would break the shift invariance, so the retention is per head). The slice is the fan-in of
each output unit (M7): for our row-convention matrices W [d_in, d_out], the softmax runs over d_in
for every column, scaled by c = sqrt(d_in) (M7's initial value; M7 learns c, here it is fixed:
docs/fidelity.md). The memory reads and takes its gradients through the view c Softmax(L); the
learned initial state is the logits L_0 themselves (`of_weights` is the identity: any L_0 is a
valid start, while not every W_0 is a softmax).
"""

from __future__ import annotations

import math

import jax

from zoo.memory.parts import Retention, register_retention
from zoo.memory.retention import scalar_decay


def softmax_view(spec, logits):
    """W = sqrt(d_in) Softmax(L) over the fan-in (axis 0) of each matrix `L: [d_in, d_out]`."""
    return tuple(math.sqrt(x.shape[0]) * jax.nn.softmax(x, axis=0) for x in logits)


register_retention(Retention(
    "kl", gate="scalar", apply=scalar_decay, view=softmax_view, of_weights=lambda spec, logits: logits,
    doc="Memora: L <- l_t L on log-weights read as W = sqrt(d_in) softmax(L) over each unit's fan-in"))

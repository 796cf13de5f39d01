"""Lattice (Karami & Mirrokni 2025, arXiv 2504.05646): the orthogonal state recurrence as a
registration on the shared memory engine (`zoo.memory.lattice`; spec miras-lattice-trellis §2).

Per head the state is m slots of size d (a matrix memory `[m, d]`, m = `memory.key_dim`): keys and
queries are m-dim latent codes, the values are the reconstruction targets x_t = v_t, and one
gradient step on ||Ŝ^T k_t - v_t||^2 through the unit-slot view gives each slot only the component
of the error orthogonal to itself; reads go through the normalised state, slots are renormalised
at chunk ends (the tangent chunk form, §2.5; `memory.retention: slot_norm_gla` gives the GLA form). The mixer shell (short conv, SiLU, L2-normalised q
and k, per-head RMSNorm and SiLU output gate) and the block (x + Lattice(Norm x), then x +
SwiGLU(Norm x)) are the project's memory block, as for Gated DeltaNet and Miras (§2.3).
"""

from __future__ import annotations

from zoo.models.memory_block import memory_language_model
from zoo.registry import register

PAPER = "Karami & Mirrokni 2025, Lattice: an orthogonal state recurrence (arXiv:2504.05646)"

# m = 16 slots (spec L6: "m = 16 ... beats full-memory baselines" at d = 64); chunk 16 (L6); eta_t =
# 2 rho_t (the l2 objective's sum convention) with rho_t = lr_max sigmoid(.), eta <= 1 as GDN's beta;
# eta = 0.025 at init, the spec's 0.1 / sqrt(m) (L4; measured on MQAR: docs/fidelity.md "Lattice").
# W_0 ~ N(0, 1) slots, normalised (any non-zero draw: the view normalises them). Unit keys and the
# renormalisation bound every step: no inner gradient clipping.
LATTICE_MEMORY = dict(structure="matrix", objective="l2", learner="gd", retention="slot_norm", semantics="anchored",
                      chunk_size=16, key_dim=16, lr_max=0.5, lr_init=0.0125, last_layer_std=1.0, max_grad_norm=0.0)

register("lattice", family="Lattice", paper=PAPER, tiny_config="configs/lattice/tiny.yaml", uses_memory=True,
         hybrid=True, memory_defaults=LATTICE_MEMORY)(memory_language_model)

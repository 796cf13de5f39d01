"""ATLAS and its family (Behrouz et al. 2025, arXiv:2505.23735; spec titans-atlas-tnt-hope §3):
memories that optimise over a sliding window of past tokens (the Omega rule, zoo.memory.window)
through a polynomial feature map (zoo.memory.feature_maps "poly2"), each a registration on the
shared memory engine:

- `omeganet` (Eq. 10-11): the l2 loss over the last c tokens, gradient descent with the forget
  gate as retention, a deep MLP memory.
- `atlas` (Eq. 32-33, App. D.4 convention): the same window loss with the Muon learner
  (momentum, then Newton-Schulz-5, the data-dependent outer step eta_t outside NS; zoo.memory.muon), chunk-parallel
  with the momentum materialised at every position and NS applied to all of them at once (§3.6).
- `atlas_pp` (Atlas++, Eq. 43; spec §1.2 and Table 6's "gated-MLP memory"): ATLAS with the gated
  memory (act(z W_2) * (z W_3)) W_1 in place of the 2-layer MLP (zoo.memory.structures "gated_mlp").
- `dla` (Eq. 19): deep linear attention, the dot-product loss -<M(phi(k)), v> on a deep memory,
  c = 1, gradient descent with decay.
- `swla` (Eq. 20): sliding-window linear attention, the dot-product loss over c = 2 tokens on a
  matrix memory (W_t = l_t W_{t-1} + rho_t sum_i gamma_i phi(k_i)^T v_i: chunk-parallel and exact).
- `deeptransformer` (Eq. 25): the dot-product loss on a deep memory with Hebbian GD (no decay) over
  the exponential map phi*, truncated at degree 2 ("exp2": the infinite map needs a growing,
  attention-like state; with a linear memory and the full phi* it is unnormalised softmax attention).
- `dot` (Eq. 27): the l2 loss over an Omega window (c = 4) on a deep memory, GD without decay, over
  the same truncated phi*.

The block is the Llama-style memory block (x + memory(Norm x), x + SwiGLU(Norm x)), with the
mixer's input path of §3.8 (Q/K/V, short conv of 4, normalised q and k); `model.hybrid_attention`
interleaves attention blocks (§3.8's SWA hybrids; MAG / MAL are Titans' blocks). Choices the paper leaves
open (window c = 4, the per-token window weights, phi of degree 2, no residual skip around a memory
whose keys are lifted to 1 + d + d(d+1)/2 features, the range of Muon's data-dependent outer step eta_t) are named
`model.memory` fields listed in docs/fidelity.md ("ATLAS").
"""

from __future__ import annotations

from zoo.models.memory_block import memory_language_model
from zoo.registry import register

PAPER = ("Behrouz, Li, Kacham, Daliri, Deng, Zhong, Razaviyayn, Mirrokni 2025, ATLAS: Learning to Optimally "
         "Memorize the Context at Test Time (arXiv:2505.23735)")

# §3.8: a 2-layer MLP memory of expansion 4 with GELU; the lifted keys (phi_2) rule out the identity
# skip (docs/fidelity.md); the forget gate as retention; gradients at the chunk start (§3.6)
ATLAS_MEMORY = dict(structure="mlp", depth=2, expansion=4, residual=False, activation="gelu",
                    qk_activation="poly2", retention="scalar", semantics="anchored", chunk_size=16, conv_width=4)
OMEGANET_MEMORY = dict(ATLAS_MEMORY, objective="l2", learner="gd", window=4)
ATLAS_MUON_MEMORY = dict(ATLAS_MEMORY, objective="l2", learner="muon", window=4)
ATLAS_PP_MEMORY = dict(ATLAS_MUON_MEMORY, structure="gated_mlp")  # Eq. 43, the same GELU and expansion
DLA_MEMORY = dict(ATLAS_MEMORY, objective="dot", learner="gd", window=1)
SWLA_MEMORY = dict(ATLAS_MEMORY, structure="matrix", objective="dot", learner="gd", window=2, semantics="exact")
DEEP_TRANSFORMER_MEMORY = dict(ATLAS_MEMORY, qk_activation="exp2", objective="dot", learner="gd", retention="none",
                               window=1)
DOT_MEMORY = dict(ATLAS_MEMORY, qk_activation="exp2", objective="l2", learner="gd", retention="none", window=4)


for _name, _memory in [("omeganet", OMEGANET_MEMORY), ("atlas", ATLAS_MUON_MEMORY), ("atlas_pp", ATLAS_PP_MEMORY),
                       ("dla", DLA_MEMORY),
                       ("swla", SWLA_MEMORY), ("deeptransformer", DEEP_TRANSFORMER_MEMORY), ("dot", DOT_MEMORY)]:
    register(_name, family="ATLAS", paper=PAPER, tiny_config=f"configs/atlas/{_name}_tiny.yaml", uses_memory=True,
             hybrid=True, memory_defaults=_memory)(memory_language_model)

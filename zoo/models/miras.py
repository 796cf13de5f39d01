"""Miras (Behrouz, Razaviyayn, Zhong, Mirrokni 2025, arXiv:2504.13173): memories named by their
attentional bias and retention, each a registration on the shared memory engine.

Moneta (Miras §5.3, Eq. 24-25) is the l_p bias (zoo.memory.lp, p = 3) with the l_q retention on
an accumulator read as W = A / ||A||_q^(q-2) (zoo.memory.lq, q = 4) and the forget gate,
chunk-parallel with the accumulator materialised at every position (each read through its own
token's normaliser, spec §1.7).
Memora (Miras §5.3, Eq. 27) is the l2 bias with the KL retention W_t = c Softmax(alpha_t log W_{t-1}
- eta_t grad l), run in log-weights (zoo.memory.kl, spec M7), chunk-parallel the same way.
Yaad (Miras §5.3, Eq. 26) is the Huber bias with a learned threshold (zoo.memory.huber, Eq. 16),
the Titans forget gate as retention, plain gradient descent (no momentum), and the Miras memory
M(z) = z + LN(W1 GELU(W2 z)) (§1.5.1 of the spec: a 2-layer residual MLP, expansion 4, with a
LayerNorm on its output), chunk-parallel with gradients at the chunk start (Eq. 28). The block is
the Llama-style memory block: x + Yaad(Norm x), then x + SwiGLU(Norm x); `model.hybrid_attention=2`
with `model.sliding_window=2048` gives the Samba-style hybrids (Moneta-H, Yaad-H, Memora-H: memory
and sliding-window attention blocks alternating, spec M10). Choices the paper leaves open are in
docs/fidelity.md ("Miras").
"""

from __future__ import annotations

from zoo.models.memory_block import memory_language_model
from zoo.registry import register

PAPER = ("Behrouz, Razaviyayn, Zhong, Mirrokni 2025, It's All Connected: A Journey Through Test-Time "
         "Memorization, Attentional Bias, Retention, and Online Optimization (arXiv:2504.13173)")

MIRAS_MEMORY = dict(structure="mlp", depth=2, expansion=4, residual=True, output_norm=True, activation="gelu",
                    learner="gd", retention="scalar", semantics="anchored", chunk_size=16, conv_width=4,
                    last_layer_std=0.3)  # W_0's last layer: LN's gain on a tiny output blows up the
# outer gradients (docs/fidelity.md "Miras": 0.02 gave a gradient norm of 93 at init and held-out
# perplexity 58.7 after the tiny config's 50 steps; 0.1: 1.2 and 29.6; 0.3: 0.82 and 28.9)
YAAD_MEMORY = dict(MIRAS_MEMORY, objective="huber")
MONETA_MEMORY = dict(MIRAS_MEMORY, objective="lp", lp_p=3.0, retention="lq", lq_q=4.0)
MEMORA_MEMORY = dict(MIRAS_MEMORY, objective="l2", retention="kl")


for _name, _memory in [("yaad", YAAD_MEMORY), ("moneta", MONETA_MEMORY), ("memora", MEMORA_MEMORY)]:
    register(_name, family="Miras", paper=PAPER, tiny_config=f"configs/miras/{_name}_tiny.yaml", uses_memory=True,
             hybrid=True, memory_defaults=_memory)(memory_language_model)

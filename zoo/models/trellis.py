"""Trellis (arXiv 2512.23852, COLM 2025; spec miras-lattice-trellis §3): the Transformer block with the
KV cache replaced by a fixed-size memory of m slots per head, written by a two-pass recurrent
compression (zoo.memory.trellis, on the shared memory engine) and read by a soft slot address.

The block (Fig. 1, §3.5): x + TrellisMixer(RMSNorm x), then x + SwiGLU(RMSNorm x). The memory's
choices the paper leaves open (phi, f, m, gamma and beta inits, chunk size, bilevel mode) are
`model.memory` fields listed in docs/fidelity.md ("Trellis").
"""

from __future__ import annotations

from flax import nnx

from zoo.config import ModelConfig
from zoo.memory.trellis_layer import TrellisMixer
from zoo.models.lm import LanguageModel, compute_dtype
from zoo.models.memory_block import MemoryBlock
from zoo.models.transformer import mlp_from_config, residual_std
from zoo.registry import register

PAPER = "Karami, Behrouz, Kacham, Mirrokni 2025, Trellis (arXiv:2512.23852, COLM 2025)"

# spec §3.3-3.8: one OGD step with forget gate on 1/2 ||phi(M w) - alpha||^2 (gd, scalar retention
# beta, gamma the inner step), codes at the chunk start (anchored), C = 16, full bilevel gradients;
# phi = f = LN-SiLU, m = the head dim, gamma 1e-2, beta 0.99 at init; no inner-step clipping
TRELLIS_MEMORY = dict(structure="matrix", objective="compression", compression_map="ln_silu", learner="gd",
                      retention="scalar", retention_gate="sigmoid", forget_init=0.01, semantics="anchored",
                      chunk_size=16, bilevel="full", max_grad_norm=0.0, conv_width=4, slots=0, slot_map="ln_silu",
                      step_init=0.01)


class TrellisBlock(MemoryBlock):
    """x + Trellis(Norm x), then x + SwiGLU(Norm x); the block API of `MemoryBlock`."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        heads = cfg.memory.num_heads or cfg.num_heads
        head_dim = cfg.memory.head_dim or cfg.d_model // heads
        self.mem_norm = self.norm(cfg)
        self.mixer = TrellisMixer(cfg.d_model, heads, head_dim, cfg.memory, std=cfg.init_std,
                                  out_std=residual_std(cfg), dtype=compute_dtype(cfg), remat=cfg.remat == "memory",
                                  rngs=rngs)
        self.mlp_norm, self.mlp = self.norm(cfg), mlp_from_config(cfg, rngs)


@register("trellis", family="Trellis", paper=PAPER, tiny_config="configs/trellis/tiny.yaml", uses_memory=True,
          memory_defaults=TRELLIS_MEMORY)
def build_trellis(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    if cfg.memory.objective != "compression" or cfg.memory.structure != "matrix":
        raise ValueError("trellis needs model.memory objective=compression and structure=matrix (a config file gets "
                         "them from the registry; in Python build the memory with "
                         "zoo.registry.memory_config('trellis', ...))")
    return LanguageModel(cfg, lambda i, r: TrellisBlock(cfg, r), rngs=rngs)

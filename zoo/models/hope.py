"""Hope (Behrouz et al. 2025, Nested Learning, arXiv:2512.24695; spec §5): blocks of the
self-modifying Titans mixer (zoo.memory.self_modifying) followed by the Continuum Memory System
in place of the MLP (zoo.layers.cms), each a pre-norm residual sublayer (Eq. 94-97). The CMS
levels' update periods are the outer optimiser's (`model.hope.cms_periods`).
"""

from __future__ import annotations

from flax import nnx

from zoo.config import ModelConfig
from zoo.layers.cms import ContinuumMemory, update_groups
from zoo.memory.self_modifying import SelfModifyingTitans
from zoo.models.lm import LanguageModel, compute_dtype
from zoo.models.memory_block import MemoryBlock
from zoo.layers import swiglu_hidden_dim
from zoo.models.transformer import residual_std
from zoo.registry import register

PAPER = "Behrouz, Razaviyayn, Zhong, Mirrokni 2025, Nested Learning: The Illusion of Deep Learning " \
        "Architectures (arXiv:2512.24695; NeurIPS 2025)"


class HopeBlock(MemoryBlock):
    """x + SelfModifyingTitans(Norm x), then x + CMS(Norm x)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg)
        head_dim = cfg.head_dim or cfg.d_model // cfg.num_heads
        self.mem_norm = self.norm(cfg)
        self.mixer = SelfModifyingTitans(cfg.d_model, cfg.num_heads, head_dim, cfg.hope, std=cfg.init_std,
                                         out_std=residual_std(cfg), dtype=dtype, remat=cfg.remat == "memory",
                                         rngs=rngs)
        self.mlp_norm = self.norm(cfg)
        self.mlp = ContinuumMemory(cfg.d_model, cfg.mlp_dim or swiglu_hidden_dim(cfg.d_model), cfg.hope.cms_periods,
                                   std=cfg.init_std, out_std=residual_std(cfg), norm_eps=cfg.norm_eps, dtype=dtype,
                                   rngs=rngs)


register("hope", family="Hope", paper=PAPER, tiny_config="configs/hope/tiny.yaml",
         update_groups=lambda cfg: update_groups(cfg.hope.cms_periods, r"(^|/)mlp/"))(
    lambda cfg, rngs: LanguageModel(cfg, lambda i, r: HopeBlock(cfg, r), rngs=rngs))

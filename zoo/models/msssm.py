"""MS-SSM (Karami et al. 2025, arXiv 2512.23824): Transformer++-shaped blocks whose token mixer is
the multi-scale SSM (`zoo.layers.msssm`; spec §1): x + MSSSM(RMSNorm x), then x + SwiGLU(RMSNorm x).
`msssm.variant: s4` is the LTI (S4D-style) variant (`configs/msssm/s4_tiny.yaml`)."""

from __future__ import annotations

from flax import nnx

from zoo.config import ModelConfig
from zoo.layers.msssm import MSSSM
from zoo.models.lm import LanguageModel, compute_dtype
from zoo.models.transformer import TransformerBlock, residual_std
from zoo.registry import register


def msssm_mixer(cfg: ModelConfig, rngs: nnx.Rngs) -> MSSSM:
    return MSSSM(cfg.d_model, spec=cfg.msssm, std=cfg.init_std, out_std=residual_std(cfg), dtype=compute_dtype(cfg),
                 rngs=rngs)


@register("msssm", family="MS-SSM", paper="MS-SSM: multi-scale state space models (arXiv 2512.23824)",
          tiny_config="configs/msssm/tiny.yaml")
def build_msssm(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    return LanguageModel(cfg, lambda i, r: TransformerBlock(cfg, r, attn=msssm_mixer(cfg, r)), rngs=rngs)

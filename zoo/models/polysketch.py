"""PolySketchFormer (Kacham, Mirrokni & Zhong 2024): Transformer++ blocks whose attention is
polynomial attention linearised by sketches (`zoo.layers.polysketch`; spec §2). The exact
quadratic polynomial attention baseline is the same model with `polysketch.feature: exact`
(`configs/polysketch/polyattention_tiny.yaml`)."""

from __future__ import annotations

from flax import nnx

from zoo.config import ModelConfig
from zoo.layers.polysketch import PolySketchAttention
from zoo.models.lm import LanguageModel, compute_dtype
from zoo.models.transformer import TransformerBlock, residual_std
from zoo.registry import register


def polysketch_attention(cfg: ModelConfig, rngs: nnx.Rngs) -> PolySketchAttention:
    return PolySketchAttention(cfg.d_model, cfg.num_heads, cfg.head_dim or cfg.d_model // cfg.num_heads,
                               spec=cfg.polysketch, rope_theta=cfg.rope_theta, std=cfg.init_std,
                               out_std=residual_std(cfg), dtype=compute_dtype(cfg), rngs=rngs)


@register("polysketchformer", family="PolySketchFormer",
          paper="Kacham, Mirrokni & Zhong 2024 (arXiv 2310.01655): PolySketchFormer",
          tiny_config="configs/polysketch/tiny.yaml")
def build_polysketchformer(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    return LanguageModel(cfg, lambda i, r: TransformerBlock(cfg, r, attn=polysketch_attention(cfg, r)), rngs=rngs)


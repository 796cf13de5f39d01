"""Llama-style "Transformer++" baseline: pre-norm blocks of RoPE attention and SwiGLU."""

from __future__ import annotations

import math

import jax
from flax import nnx

from zoo.config import ModelConfig
from zoo.layers import Attention, KVCache, RMSNorm, SwiGLU, swiglu_hidden_dim
from zoo.models.lm import LanguageModel, compute_dtype
from zoo.registry import register


def attention_from_config(cfg: ModelConfig, rngs: nnx.Rngs, *, persistent: int = 0) -> Attention:
    """The attention layer a config describes (shared by every family that mixes in attention)."""
    head_dim = cfg.head_dim or cfg.d_model // cfg.num_heads
    return Attention(
        cfg.d_model, cfg.num_heads, cfg.num_kv_heads or cfg.num_heads, head_dim,
        rope_theta=cfg.rope_theta, sliding_window=cfg.sliding_window, conv_width=cfg.attn_conv_width,
        std=cfg.init_std, out_std=residual_std(cfg), dtype=compute_dtype(cfg), rngs=rngs, persistent=persistent,
        implementation=cfg.attention, kv_cache=cfg.kv_cache)


def mlp_from_config(cfg: ModelConfig, rngs: nnx.Rngs) -> SwiGLU:
    return SwiGLU(cfg.d_model, cfg.mlp_dim or swiglu_hidden_dim(cfg.d_model), std=cfg.init_std,
                  out_std=residual_std(cfg), dtype=compute_dtype(cfg), rngs=rngs)


def residual_std(cfg: ModelConfig) -> float:
    """Init std of projections that write into the residual stream (GPT-2's 1/sqrt(2L) scaling)."""
    return cfg.init_std / math.sqrt(2 * cfg.num_layers)


class TransformerBlock(nnx.Module):
    """x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); `x: [batch, seq, d_model]`. `attn`: another
    attention layer with Attention's interface (`__call__`, `init_cache`, `extend`), e.g. PolySketch."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, attn: nnx.Module | None = None):
        dtype = compute_dtype(cfg)
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.attn = attn if attn is not None else attention_from_config(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = mlp_from_config(cfg, rngs)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), segment_ids=segment_ids)
        return x + self.mlp(self.mlp_norm(x))

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        return self.attn.init_cache(batch_size, max_len)

    def extend(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        h, cache = self.attn.extend(self.attn_norm(x), cache)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache


@register("transformer", family="Transformer", paper="Touvron et al. 2023 (Llama); Transformer++ baseline",
          tiny_config="configs/transformer/tiny.yaml")
def build_transformer(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    return LanguageModel(cfg, lambda i, r: TransformerBlock(cfg, r), rngs=rngs)

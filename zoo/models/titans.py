"""Titans (Behrouz et al. 2025, arXiv:2501.00663): the neural long-term memory (LMM) alone and
as context (MAC), gate (MAG) or layer (MAL) around attention. The memory is the shared
engine (zoo.memory) behind the shared mixer; blocks only decide how it meets attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import ModelConfig
from zoo.models.lm import LanguageModel
from zoo.models.memory_block import Block, memory_language_model, mixer_from_config
from zoo.models.transformer import attention_from_config, mlp_from_config
from zoo.registry import register

PAPER = "Behrouz, Zhong, Mirrokni 2025, Titans: Learning to Memorize at Test Time (arXiv:2501.00663)"


class MALBlock(Block):
    """Titans MAL (Eq. 29-31): memory layer, then sliding-window attention (with persistent
    memory), then the MLP, each a pre-norm residual sublayer."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.mem_norm, self.mixer = self.norm(cfg), mixer_from_config(cfg, rngs)
        self.attn_norm, self.attn = self.norm(cfg), attention_from_config(cfg, rngs, persistent=cfg.persistent_tokens)
        self.mlp_norm, self.mlp = self.norm(cfg), mlp_from_config(cfg, rngs)

    def init_cache(self, batch_size, max_len):
        return (self.mixer.init_state_for(batch_size), self.attn.init_cache(batch_size, max_len))

    def mix(self, x, cache, segment_ids):
        mem_state, kv = (None, None) if cache is None else cache
        h, mem_state = self.mixer(self.mem_norm(x), state=mem_state, segment_ids=segment_ids)
        x = x + h
        if cache is None:
            return x + self.attn(self.attn_norm(x), segment_ids=segment_ids), None
        a, kv = self.attn.extend(self.attn_norm(x), kv)
        return x + a, (mem_state, kv)


class MAGBlock(Block):
    """Titans MAG (Eq. 26-28): sliding-window attention (with persistent memory) and the memory
    read the same normed input; o = y * sigmoid(RMSNorm_b(mem)), or RMSNorm_a(y) * sigmoid(...)
    with `model.mag_attention_norm` (the spec §2.4 reading; slower to learn, docs/fidelity.md)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.in_norm = self.norm(cfg)
        self.mixer = mixer_from_config(cfg, rngs)
        self.attn = attention_from_config(cfg, rngs, persistent=cfg.persistent_tokens)
        self.attn_out_norm = self.norm(cfg) if cfg.mag_attention_norm else None
        self.mem_out_norm = self.norm(cfg)
        self.mlp_norm, self.mlp = self.norm(cfg), mlp_from_config(cfg, rngs)

    def init_cache(self, batch_size, max_len):
        return (self.mixer.init_state_for(batch_size), self.attn.init_cache(batch_size, max_len))

    def mix(self, x, cache, segment_ids):
        h = self.in_norm(x)
        if cache is None:
            a = self.attn(h, segment_ids=segment_ids)
            m, _ = self.mixer(h, segment_ids=segment_ids)
            new_cache = None
        else:
            a, kv = self.attn.extend(h, cache[1])
            m, mem_state = self.mixer(h, state=cache[0])
            new_cache = (mem_state, kv)
        if self.attn_out_norm is not None:
            a = self.attn_out_norm(a)
        gate = jax.nn.sigmoid(self.mem_out_norm(m).astype(jnp.float32))
        return x + (a.astype(jnp.float32) * gate).astype(x.dtype), new_cache


def _builder(block_cls):
    def build(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
        return LanguageModel(cfg, lambda i, r: block_cls(cfg, r), rngs=rngs)

    return build


# Titans LMM: the memory is the only token mixer (memory_block.MemoryBlock).
register("titans_lmm", family="Titans", paper=PAPER, tiny_config="configs/titans/lmm_tiny.yaml",
         uses_memory=True, hybrid=True)(memory_language_model)
register("titans_mag", family="Titans", paper=PAPER, tiny_config="configs/titans/mag_tiny.yaml",
         uses_memory=True)(_builder(MAGBlock))
register("titans_mal", family="Titans", paper=PAPER, tiny_config="configs/titans/mal_tiny.yaml",
         uses_memory=True)(_builder(MALBlock))

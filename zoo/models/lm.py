"""The one language-model wrapper every family uses: embed -> blocks -> norm -> head.

A block is any `nnx.Module` with
    block(x, *, segment_ids=None) -> x                      # [batch, seq, d_model], full sequence
    block.init_cache(batch_size, max_len) -> cache          # a pytree (KV caches, memory states)
    block.extend(x, cache) -> (x, cache)                    # continue a sequence from the cache
so families differ only in their blocks. `extend` serves prefill, streaming a long context in
segments, and decoding (one token at a time) with the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import ModelConfig
from zoo.layers import Embedding, Projection, RMSNorm


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class LanguageModel(nnx.Module):
    """`tokens: [batch, seq] int32 -> logits: [batch, seq, vocab] float32`."""

    def __init__(self, cfg: ModelConfig, make_block: Callable[[int, nnx.Rngs], nnx.Module], *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = compute_dtype(cfg)
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, std=cfg.init_std, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([make_block(i, rngs) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.head = None if cfg.tie_embeddings else Projection(
            (cfg.d_model,), (cfg.vocab_size,), axes=("embed", "vocab"), std=cfg.init_std, dtype=dtype, rngs=rngs)

    def _check_tokens(self, tokens: jax.Array) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq] int32, got shape {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")

    def _logits(self, x: jax.Array) -> jax.Array:
        x = self.norm(x)
        if self.head is None:
            return self.embed.attend(x)
        return self.head(x).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """Logits for every position; `segment_ids: [batch, seq]` (packed documents) keeps
        documents from seeing each other."""
        self._check_tokens(tokens)
        x = self.embed(tokens)
        for block in self.blocks:
            if self.cfg.remat:
                x = nnx.remat(lambda b, h, s: b(h, segment_ids=s))(block, x, segment_ids)
            else:
                x = block(x, segment_ids=segment_ids)
        return self._logits(x)

    def init_cache(self, batch_size: int, max_len: int) -> list[Any]:
        """Per-block caches for a sequence of up to `max_len` tokens (attention KV caches,
        memory states). Sliding-window layers keep only their window."""
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"init_cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        return [block.init_cache(batch_size, max_len) for block in self.blocks]

    def extend(self, tokens: jax.Array, cache: list[Any]) -> tuple[jax.Array, list[Any]]:
        """Continues the cached sequence with `tokens: [batch, seq]`: prefill, or one segment of
        a long context. Returns (logits [batch, seq, vocab], new cache)."""
        self._check_tokens(tokens)
        if len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.blocks)}: "
                             "make it with this model's init_cache")
        x = self.embed(tokens)
        new_cache = []
        for block, c in zip(self.blocks, cache):
            x, c = block.extend(x, c)
            new_cache.append(c)
        return self._logits(x), new_cache

    def decode_step(self, tokens: jax.Array, cache: list[Any]) -> tuple[jax.Array, list[Any]]:
        """One decoding step: `tokens: [batch, 1] -> (logits [batch, 1, vocab], cache)`."""
        if tokens.ndim != 2 or tokens.shape[1] != 1:
            raise ValueError(f"decode_step takes one token per sequence, shape [batch, 1]; got {tokens.shape}")
        return self.extend(tokens, cache)

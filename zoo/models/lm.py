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

    def logits_from_hidden(self, x: jax.Array) -> jax.Array:
        """`[..., d_model]` hidden states -> `[..., vocab]` float32 logits (final norm, then head)."""
        return self._logits(x)

    def _logits(self, x: jax.Array) -> jax.Array:
        x = self.norm(x)
        if self.head is None:
            return self.embed.attend(x)
        return self.head(x).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """Logits for every position; `segment_ids: [batch, seq]` (packed documents) keeps
        documents from seeing each other."""
        self._check_tokens(tokens)
        return self._logits(self.hidden(tokens, segment_ids=segment_ids))

    def hidden(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """The last block's output `[batch, seq, d_model]` (before the final norm and the head):
        what a chunked loss (zoo.training.losses) turns into logits piece by piece."""
        self._check_tokens(tokens)
        return self._run_blocks(self.embed(tokens), segment_ids)

    def _run_blocks(self, x: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """All blocks in order. With `cfg.remat` != "none" and identical blocks (one graphdef),
        the blocks' parameters are stacked and the layers run as one `lax.scan`: the backward pass
        then walks the layers in reverse and recomputes each one inside its own iteration, so the
        compiler cannot schedule all recomputations ahead of the loss (a Python loop of
        `jax.checkpoint` calls lets it, and then nothing is saved). "block" checkpoints the whole
        block (only its input x is kept per layer); "memory" keeps attention / MLP activations and
        recomputes the memory mixers (their own remat, zoo.memory.layer)."""
        remat = self.cfg.remat
        if remat == "none":
            for block in self.blocks:
                x = block(x, segment_ids=segment_ids)
            return x
        graphdefs, states = zip(*(nnx.split(block) for block in self.blocks))
        if any(g != graphdefs[0] for g in graphdefs[1:]):  # mixed block types: a loop of checkpoints
            for block in self.blocks:
                x = nnx.remat(lambda b, h, s: b(h, segment_ids=s))(block, x, segment_ids) if remat == "block" \
                    else block(x, segment_ids=segment_ids)
            return x
        stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *states)

        def layer(h, state):
            return nnx.merge(graphdefs[0], state)(h, segment_ids=segment_ids)

        if remat == "block":
            layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)
        x, _ = jax.lax.scan(lambda h, state: (layer(h, state), None), x, stacked)
        return x

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

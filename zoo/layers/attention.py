"""Causal multi-head / grouped-query attention with RoPE, optional sliding window and KV cache.

The cacheless path calls `jax.nn.dot_product_attention(is_causal=True, local_window_size=...)`
so GPUs can take the cuDNN kernel. The cached path (`extend`) serves prefill, streaming a long
context in segments, and one-token decoding alike: the cache is a ring buffer of `cache_size`
slots (the window for sliding-window attention, so memory is constant in context length; the
maximum length otherwise) that remembers each slot's absolute position for masking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from zoo.layers.conv import ShortConv
from zoo.layers.linear import Projection
from zoo.layers.rotary import apply_rotary


@struct.dataclass
class KVCache:
    """k, v: [batch, cache_size, kv_heads, head_dim]; slot_pos: [cache_size] absolute position of
    each slot (-1 = empty); pos: [] int32 next position; conv_tail: [batch, K-1, d_model] or None."""

    k: jax.Array
    v: jax.Array
    slot_pos: jax.Array
    pos: jax.Array
    conv_tail: jax.Array | None = None


class Attention(nnx.Module):
    """`x: [batch, seq, d_model] -> [batch, seq, d_model]`, causal, `num_heads` query heads sharing
    `num_kv_heads` key/value heads. `sliding_window = W > 0`: token t sees tokens t-W+1 .. t."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float, sliding_window: int, conv_width: int, std: float, out_std: float,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta, self.sliding_window, self.dtype = rope_theta, sliding_window, dtype
        self.conv = ShortConv(d_model, conv_width, dtype=dtype) if conv_width else None
        proj = dict(std=std, dtype=dtype, rngs=rngs)
        self.q = Projection((d_model,), (num_heads, head_dim), axes=("embed", "heads", "kv"), **proj)
        self.k = Projection((d_model,), (num_kv_heads, head_dim), axes=("embed", "kv_heads", "kv"), **proj)
        self.v = Projection((d_model,), (num_kv_heads, head_dim), axes=("embed", "kv_heads", "kv"), **proj)
        self.o = Projection((num_heads, head_dim), (d_model,), axes=("heads", "kv", "embed"),
                            std=out_std, dtype=dtype, rngs=rngs)

    def _qkv(self, x, positions, segment_ids=None, conv_tail=None):
        tail = None
        if self.conv is not None:
            x, tail = self.conv(x, segment_ids=segment_ids, tail=conv_tail)
        q = apply_rotary(self.q(x), positions, self.rope_theta)
        k = apply_rotary(self.k(x), positions, self.rope_theta)
        return q, k, self.v(x), tail

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """Full-sequence causal attention; `segment_ids: [batch, seq]` keeps documents apart."""
        seq = x.shape[1]
        q, k, v, _ = self._qkv(x, jnp.arange(seq), segment_ids)
        mask = None
        if segment_ids is not None:
            mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        window = (self.sliding_window - 1, 0) if self.sliding_window else None
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=window)
        return self.o(out)

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        size = min(self.sliding_window, max_len) if self.sliding_window else max_len
        shape = (batch_size, size, self.num_kv_heads, self.head_dim)
        tail = self.conv.init_tail(batch_size) if self.conv is not None else None
        return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype),
                       jnp.full((size,), -1, jnp.int32), jnp.zeros((), jnp.int32), tail)

    def extend(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Attends `x: [batch, seq, d_model]` (positions cache.pos ...) to the cache and itself,
        then writes its keys/values into the ring buffer. Returns (y, new cache)."""
        seq = x.shape[1]
        size = cache.k.shape[1]
        qpos = cache.pos + jnp.arange(seq, dtype=jnp.int32)
        q, k, v, tail = self._qkv(x, qpos, conv_tail=cache.conv_tail)
        keys = jnp.concatenate([cache.k, k.astype(cache.k.dtype)], axis=1)
        values = jnp.concatenate([cache.v, v.astype(cache.v.dtype)], axis=1)
        kpos = jnp.concatenate([cache.slot_pos, qpos])
        mask = (kpos[None, :] >= 0) & (kpos[None, :] <= qpos[:, None])
        if self.sliding_window:
            mask &= qpos[:, None] - kpos[None, :] < self.sliding_window
        out = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask[None, None])
        keep = min(seq, size)  # only the newest `size` tokens can stay in the ring
        slots = qpos[seq - keep:] % size
        new_cache = KVCache(
            k=cache.k.at[:, slots].set(k[:, seq - keep:].astype(cache.k.dtype)),
            v=cache.v.at[:, slots].set(v[:, seq - keep:].astype(cache.v.dtype)),
            slot_pos=cache.slot_pos.at[slots].set(qpos[seq - keep:]),
            pos=cache.pos + seq,
            conv_tail=tail,
        )
        return self.o(out), new_cache

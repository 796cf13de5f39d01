"""Causal multi-head / grouped-query attention with RoPE, optional sliding window and KV cache.

The cacheless path goes through `zoo.layers.attend.attend`, which picks an implementation by
platform and features (cuDNN's flash kernel on GPUs where it applies, a blockwise pure-JAX form
with O(T * block) memory for long sequences, XLA's dense form otherwise). The cached path (`extend`) serves prefill, streaming a long
context in segments, and one-token decoding alike: the cache is a ring buffer of `cache_size`
slots (the window for sliding-window attention, so memory is constant in context length; the
maximum length otherwise) that remembers each slot's absolute position for masking. With a
quantized `kv_cache` format (zoo.layers.kv_cache) the cache is a packed store plus a
full-precision window of the newest tokens, read by `kernels.quantized_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from zoo.layers.attend import IMPLEMENTATIONS, attend, attend_at
from zoo.layers.conv import ShortConv
from zoo.layers.kv_cache import KVCacheFormat, QuantizedKVCache, channel_scores, layout_of, qcache, quantized
from zoo.layers.linear import Projection
from zoo.layers.param import normal_param
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


def positions_in_documents(segment_ids: jax.Array | None, seq: int) -> jax.Array:
    """Rotary positions: `[seq]` 0..seq-1, or with `segment_ids: [batch, seq]` the position within
    each document `[batch, seq]`, so a packed document is encoded exactly as if it were alone."""
    index = jnp.arange(seq)
    if segment_ids is None:
        return index
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


class Attention(nnx.Module):
    """`x: [batch, seq, d_model] -> [batch, seq, d_model]`, causal, `num_heads` query heads sharing
    `num_kv_heads` key/value heads. `sliding_window = W > 0`: token t sees tokens t-W+1 .. t.
    `persistent = N_p > 0`: N_p learned key/value slots per KV head that every query sees
    (Titans' persistent memory, Eq. 19, as per-head K/V; no rotary on them). `kv_cache`: how
    `init_cache` / `extend` store keys and values (a float dtype or a quantized codec)."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float, sliding_window: int, conv_width: int, std: float, out_std: float,
                 dtype: jnp.dtype, rngs: nnx.Rngs, persistent: int = 0, implementation: str = "auto",
                 kv_cache: KVCacheFormat | None = None):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention implementation {implementation!r}; allowed: {', '.join(IMPLEMENTATIONS)}")
        self.implementation = implementation
        self.kv_cache = kv_cache or KVCacheFormat()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta, self.sliding_window, self.dtype = rope_theta, sliding_window, dtype
        self.conv = ShortConv(d_model, conv_width, dtype=dtype) if conv_width else None
        proj = dict(std=std, dtype=dtype, rngs=rngs)
        self.q = Projection((d_model,), (num_heads, head_dim), axes=("embed", "heads", "kv"), **proj)
        self.k = Projection((d_model,), (num_kv_heads, head_dim), axes=("embed", "kv_heads", "kv"), **proj)
        self.v = Projection((d_model,), (num_kv_heads, head_dim), axes=("embed", "kv_heads", "kv"), **proj)
        self.o = Projection((num_heads, head_dim), (d_model,), axes=("heads", "kv", "embed"),
                            std=out_std, dtype=dtype, rngs=rngs)
        if persistent:
            shape, axes = (persistent, num_kv_heads, head_dim), (None, "kv_heads", "kv")
            self.persistent_k = normal_param(rngs, shape, axes, head_dim ** -0.5)
            self.persistent_v = normal_param(rngs, shape, axes, head_dim ** -0.5)
        else:
            self.persistent_k = self.persistent_v = None

    def persistent_slots(self) -> tuple[jax.Array, jax.Array] | None:
        """(pk, pv) each [P, Hkv, d], or None without persistent memory."""
        return None if self.persistent_k is None else (self.persistent_k.value, self.persistent_v.value)

    def _qkv(self, x, positions, segment_ids=None, conv_tail=None):
        tail = None
        if self.conv is not None:
            x, tail = self.conv(x, segment_ids=segment_ids, tail=conv_tail)
        q = apply_rotary(self.q(x), positions, self.rope_theta)
        k = apply_rotary(self.k(x), positions, self.rope_theta)
        return q, k, self.v(x), tail

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """Full-sequence causal attention; `segment_ids: [batch, seq]` keeps documents apart."""
        q, k, v, _ = self._qkv(x, positions_in_documents(segment_ids, x.shape[1]), segment_ids)
        return self.o(attend(q, k, v, segment_ids=segment_ids, window=self.sliding_window,
                             persistent=self.persistent_slots(),
                             implementation=self.implementation))

    def init_cache(self, batch_size: int, max_len: int) -> KVCache | QuantizedKVCache:
        tail = self.conv.init_tail(batch_size) if self.conv is not None else None
        if self.kv_cache.quantized:
            key_codec, value_codec = self.kv_cache.codecs()
            layout = qcache.make_layout(key_codec, value_codec, kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                                        max_len=max_len, window=self.sliding_window, recent=self.kv_cache.recent)
            scores = {}
            if self.kv_cache.outliers:  # the outlier split gives the largest channels more bits
                scores = dict(key_scores=channel_scores(self.k.kernel.value, rotary=True),
                              value_scores=channel_scores(self.v.kernel.value, rotary=False))
            store = qcache.init(layout, batch_size, self.dtype, seed=self.kv_cache.seed, **scores)
            return QuantizedKVCache(store, jnp.zeros((), jnp.int32), tail)
        size = min(self.sliding_window, max_len) if self.sliding_window else max_len
        shape = (batch_size, size, self.num_kv_heads, self.head_dim)
        dtype = self.kv_cache.float_dtype(self.dtype)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.full((size,), -1, jnp.int32), jnp.zeros((), jnp.int32), tail)

    def extend(self, x: jax.Array, cache: KVCache | QuantizedKVCache) -> tuple[jax.Array, KVCache | QuantizedKVCache]:
        """Attends `x: [batch, seq, d_model]` (positions cache.pos ...) to the cache and itself,
        then writes its keys/values into the cache. Returns (y, new cache)."""
        if isinstance(cache, QuantizedKVCache):
            return self._extend_quantized(x, cache)
        seq = x.shape[1]
        size = cache.k.shape[1]
        qpos = cache.pos + jnp.arange(seq, dtype=jnp.int32)
        q, k, v, tail = self._qkv(x, qpos, conv_tail=cache.conv_tail)
        keys = jnp.concatenate([cache.k, k.astype(cache.k.dtype)], axis=1)
        values = jnp.concatenate([cache.v, v.astype(cache.v.dtype)], axis=1)
        kpos = jnp.concatenate([cache.slot_pos, qpos])
        out = attend_at(q, keys.astype(q.dtype), values.astype(q.dtype), q_pos=qpos, k_pos=kpos,
                        window=self.sliding_window, persistent=self.persistent_slots())
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

    def _extend_quantized(self, x: jax.Array, cache: QuantizedKVCache) -> tuple[jax.Array, QuantizedKVCache]:
        """`extend` with a quantized cache: the call's tokens attend to the packed store, the
        full-precision recent window and each other; then they are written (kernels.quantized_attention)."""
        seq = x.shape[1]
        qpos = cache.pos + jnp.arange(seq, dtype=jnp.int32)
        q, k, v, tail = self._qkv(x, qpos, conv_tail=cache.conv_tail)
        layout = layout_of(self.kv_cache, cache.store)
        out = quantized.quantized_attention(q, qpos, cache.store, layout, k, v, cache.pos, window=self.sliding_window,
                                            persistent=self.persistent_slots(), backend=self.kv_cache.backend)
        store = qcache.write(layout, cache.store, k, v, cache.pos)
        return self.o(out), QuantizedKVCache(store, cache.pos + seq, tail)

"""A quantized KV cache for one attention layer (spec §3.6): keys and values stored packed by a
codec, the newest tokens kept in full precision.

Two parts, both ring buffers over absolute positions:
- the store: `slots` S positions of packed codes, written a whole codec group (G tokens, 32 for
  KIVI, else 1) at a time once the group is complete; leaves `[batch, kv_heads, S / G, ...]`, the
  positions they hold in `slot_pos [S / G, G]` (-1 = empty).
- the ring: the last R + G - 1 tokens in full precision, `[batch, R + G - 1, kv_heads, d]`
  (R = `recent` >= G - 1; the G - 1 extra tokens complete the groups that end in a call).
The reading rule is per query: the query at position t reads key p quantized when p < t - R and
in full precision otherwise. So prefill, streaming in pieces and one-token decoding see the same
keys (decode after prefill == decode from the start), and every key read quantized belongs to a
complete group. A call starting at position P reads positions < P - R from the store, and keys in
[P - R, P + seq - 1 - R) that its later queries see quantized from `dequantized_span`. Codec
constants (rotations, sketches, codebooks) are drawn per KV head from a fixed seed and travel with
the cache.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.quantized_attention.codecs import codec

TILE = 128  # tokens per tile of the store (stores larger than one tile are a multiple of it)


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """Static description of one layer's quantized cache (shapes and codecs, no arrays)."""

    key_codec: str
    value_codec: str
    kv_heads: int
    head_dim: int
    slots: int  # S: positions the store holds, a multiple of `group`
    recent: int  # R: a query reads the keys of its last R tokens in full precision (>= group - 1)

    @property
    def group(self) -> int:
        return max(codec(self.key_codec).group, codec(self.value_codec).group)

    @property
    def ring(self) -> int:
        """Full-precision tokens kept: R + G - 1."""
        return self.recent + self.group - 1


def make_layout(key_codec: str, value_codec: str, *, kv_heads: int, head_dim: int, max_len: int, window: int = 0,
                recent: int = 0) -> CacheLayout:
    """The layout for a cache of `max_len` tokens (a sliding window `window` > 0 bounds it): the
    store holds every position a query can still see outside the recent window, rounded up to
    whole groups (and to whole tiles of `TILE` tokens past one tile)."""
    group = max(codec(key_codec).group, codec(value_codec).group)
    if max_len < 1 or recent < 0 or window < 0:
        raise ValueError(f"a quantized KV cache needs max_len >= 1, recent >= 0, window >= 0; got {max_len}, "
                         f"{recent}, {window}")
    if head_dim < 3 and any(name.startswith("turbo") for name in (key_codec, value_codec)):
        raise ValueError(f"TurboQuant codecs need a head dimension >= 3, got {head_dim}")
    needed = min(window + group - 1, max_len) if window else max_len
    unit = group if needed <= TILE else TILE
    return CacheLayout(key_codec, value_codec, kv_heads, head_dim, slots=math.ceil(needed / unit) * unit,
                       recent=max(recent, group - 1))


class QuantizedKV(NamedTuple):
    """The cache's arrays (a pytree). `keys` / `values`: the codecs' stored arrays, leaves
    `[batch, kv_heads, S / G, ...]`; `*_constants`: leaves `[kv_heads, ...]`; `slot_pos: [S / G, G]`;
    `recent_k`, `recent_v: [batch, R + G - 1, kv_heads, d]`; `recent_pos: [R + G - 1]` (-1 = empty)."""

    keys: dict
    values: dict
    key_constants: dict
    value_constants: dict
    slot_pos: jax.Array
    recent_k: jax.Array
    recent_v: jax.Array
    recent_pos: jax.Array


def _per_head(fn, x, constants):
    """`fn(x_h, constants_h)` for each KV head: x `[batch, kv_heads, ...]`, constants `[kv_heads, ...]`."""
    return jax.vmap(fn, in_axes=(1, 0), out_axes=1)(x, constants)


def encode(layout: CacheLayout, x: jax.Array, constants: dict, role: str) -> dict:
    """`x: [batch, kv_heads, n, G, d]` (n whole groups) -> stored arrays `[batch, kv_heads, n, ...]`."""
    name = layout.key_codec if role == "key" else layout.value_codec
    return _per_head(lambda xh, ch: codec(name).encode(xh, ch, role), x, constants)


def rows_and_bases(layout: CacheLayout, stored: dict, constants: dict, role: str):
    """The store as the codec's parts: (rows, bases) with rows `[batch, kv_heads, S, width_i]` and
    bases `[kv_heads, width_i, d]` (None: identity, width d); decoded = sum_i rows_i @ bases_i per head."""
    c = codec(layout.key_codec if role == "key" else layout.value_codec)
    rows = _per_head(lambda s, ch: c.rows(s, ch, role), stored, constants)
    rows = tuple(r.reshape(r.shape[:2] + (-1, r.shape[-1])) for r in rows)
    return rows, c.bases(constants, role)  # bases only pick constants: the [kv_heads] axis stays in front


def init(layout: CacheLayout, batch: int, dtype, seed: int = 0, key_scores=None, value_scores=None) -> QuantizedKV:
    """An empty cache; the codecs' constants come from `seed`, one draw per KV head.
    `key_scores`, `value_scores`: `[kv_heads, d]` expected channel magnitudes (an outlier-split
    codec gives its largest channels more bits; None: the first channels)."""
    h, d, g = layout.kv_heads, layout.head_dim, layout.group
    # Constants are drawn when traced (they depend on the seed only), so a jitted init_cache embeds
    # them instead of running a QR per call (XLA:CPU's LAPACK calls inside a large compiled decode
    # loop deadlocked with jaxlib 0.10.2, see docs/fidelity.md).
    with jax.ensure_compile_time_eval():
        heads = jax.random.split(jax.random.key(seed), 2 * h).reshape(2, h)
        constants = [jax.vmap(lambda k, sc, name=name: codec(name).setup(k, d, sc))(heads[i], scores)
                     for i, (name, scores) in enumerate(((layout.key_codec, key_scores),
                                                         (layout.value_codec, value_scores)))]
    zeros = jnp.zeros((batch, h, layout.slots // g, g, d), jnp.float32)
    stored = [jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda x, c, role=role: encode(layout, x, c, role),
                                                          zeros, constants[i]))
              for i, role in enumerate(("key", "value"))]
    recent = jnp.zeros((batch, layout.ring, h, d), dtype)
    return QuantizedKV(stored[0], stored[1], constants[0], constants[1],
                       jnp.full((layout.slots // g, g), -1, jnp.int32), recent, recent,
                       jnp.full((layout.ring,), -1, jnp.int32))


def _groups(layout: CacheLayout, ring: jax.Array, new: jax.Array, pos, first_group, count: int) -> jax.Array:
    """Full-precision tokens of `count` consecutive groups from `first_group`, `[b, h, count, G, d]`
    float32, taken from the ring (positions pos - R - G + 1 .. pos - 1) and the call's `new`
    tokens (positions pos ..); positions past the call read zeros (an incomplete group)."""
    b, _, h, d = new.shape
    g, size = layout.group, layout.ring
    start = pos - size
    earlier = ring[:, (start + jnp.arange(size, dtype=jnp.int32)) % size] if size else new[:, :0]
    source = jnp.concatenate([earlier.astype(jnp.float32), new.astype(jnp.float32),
                              jnp.zeros((b, g, h, d), jnp.float32)], axis=1)
    offsets = (first_group + jnp.arange(count, dtype=jnp.int32)) * g - start
    groups = jax.vmap(lambda o: jax.lax.dynamic_slice_in_dim(source, o, g, axis=1))(offsets)  # [n, b, g, h, d]
    return groups.transpose(1, 3, 0, 2, 4)


def write(layout: CacheLayout, cache: QuantizedKV, k: jax.Array, v: jax.Array, pos: jax.Array) -> QuantizedKV:
    """Appends `k, v: [batch, seq, kv_heads, d]` at positions pos .. pos + seq - 1: encodes every
    group the call completes into the store and keeps the newest R + G - 1 tokens in the ring."""
    seq = k.shape[1]
    g, size = layout.group, layout.ring
    groups_in_store = layout.slots // g
    pos = jnp.asarray(pos, jnp.int32)
    candidates = (seq - 1) // g + 2  # groups that can hold a position of this call
    index = pos // g + jnp.arange(candidates, dtype=jnp.int32)
    last_complete = (pos + seq) // g - 1
    keep = (index <= last_complete) & (index > last_complete - groups_in_store)  # newest lap of the ring only
    target = jnp.where(keep, index % groups_in_store, groups_in_store)  # out of range: dropped

    def put(store, new):
        return jax.tree.map(lambda s, n: s.at[:, :, target].set(n.astype(s.dtype), mode="drop"), store, new)

    keys = put(cache.keys, encode(layout, _groups(layout, cache.recent_k, k, pos, pos // g, candidates),
                                  cache.key_constants, "key"))
    values = put(cache.values, encode(layout, _groups(layout, cache.recent_v, v, pos, pos // g, candidates),
                                      cache.value_constants, "value"))
    slot_pos = cache.slot_pos.at[target].set(index[:, None] * g + jnp.arange(g, dtype=jnp.int32), mode="drop")
    recent_k, recent_v, recent_pos = cache.recent_k, cache.recent_v, cache.recent_pos
    if size:
        kept = min(seq, size)
        new_pos = pos + jnp.arange(seq - kept, seq, dtype=jnp.int32)
        slots = new_pos % size
        recent_k = recent_k.at[:, slots].set(k[:, seq - kept:].astype(recent_k.dtype))
        recent_v = recent_v.at[:, slots].set(v[:, seq - kept:].astype(recent_v.dtype))
        recent_pos = recent_pos.at[slots].set(new_pos)
    return QuantizedKV(keys, values, cache.key_constants, cache.value_constants, slot_pos, recent_k, recent_v,
                       recent_pos)


def dequantized_span(layout: CacheLayout, cache: QuantizedKV, k: jax.Array, v: jax.Array, pos: jax.Array):
    """The keys and values a call's later queries read quantized but the store does not hold yet:
    positions [pos - R, pos + seq - 1 - R), as whole groups encoded and decoded again. Returns
    (k, v `[batch, n G, kv_heads, d]` float32, positions `[n G]`), or None for a one-token call."""
    seq = k.shape[1]
    if seq == 1:
        return None
    g = layout.group
    first = jnp.maximum((jnp.asarray(pos, jnp.int32) - layout.recent) // g, 0)
    count = (seq - 2) // g + 2
    decoded = []
    for x, ring, constants, role, name in ((k, cache.recent_k, cache.key_constants, "key", layout.key_codec),
                                           (v, cache.recent_v, cache.value_constants, "value", layout.value_codec)):
        stored = encode(layout, _groups(layout, ring, x, pos, first, count), constants, role)
        out = _per_head(lambda s, c, name=name, role=role: codec(name).decode(s, c, role), stored, constants)
        b, h = out.shape[:2]
        decoded.append(out.reshape(b, h, count * g, -1).transpose(0, 2, 1, 3))
    return decoded[0], decoded[1], first * g + jnp.arange(count * g, dtype=jnp.int32)


def stored_bytes_per_token(layout: CacheLayout) -> float:
    """Bytes the store keeps per token per KV head for keys and values together (codes, scales,
    norms; the recent window and the per-head constants excluded)."""
    cache = jax.eval_shape(lambda: init(layout, 1, jnp.bfloat16))
    stored = jax.tree.leaves((cache.keys, cache.values))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in stored) / (layout.slots * layout.kv_heads)

"""Attention that reads a quantized KV cache directly (spec §3.6): the entry point of cached
decoding and chunked prefill when `model.kv_cache` quantizes.

`quantized_attention(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent, backend)`:
queries `q: [batch, Tq, Hq, d]` at positions `q_pos: [Tq]` attend causally to the cache (written
up to position pos - 1) and to the call's own keys `k_new, v_new: [batch, Tq, Hkv, d]` (positions
pos ..), within `window` when > 0, plus persistent slots `(pk, pv) [P, Hkv, d]` every query sees.
The G = Hq / Hkv query heads of a KV head are stacked as rows (GQA). Returns `[batch, Tq, Hq, d]`.

Backends (`IMPLEMENTATIONS`):
- reference: decode the whole store, concatenate it with the full-precision keys, dense softmax.
- xla: scores in each codec part's domain (the query rotated once per part, the store's rows
  never rotated), values accumulated as rows and un-rotated once; the keys outside the store (the
  full-precision ring and the call's own, the call's span read quantized, persistent slots) are a
  second softmax partial merged by log-sum-exp.
- pallas: the store's partial as a flash-decoding kernel (grid: batch, KV head, splits of the cache
  length; per tile: unpack, score, online softmax); partials combined in jnp, then as in xla.
  Interpret mode on CPU (or with MEMZOO_PALLAS_INTERPRET=1); lowered by Pallas on GPU / TPU.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from kernels.common import Implementation, Implementations
from kernels.quantized_attention.cache import TILE, CacheLayout, QuantizedKV, dequantized_span, rows_and_bases
from kernels.quantized_attention.codecs import codec

MAX_SPLITS = 16  # parallel splits of the cache length in the Pallas kernel (flash-decoding)
_NEG = -1e30  # finite "minus infinity": a fully masked tile leaves exp(s - m) = 0, never NaN


def _rows(q: jax.Array, kv_heads: int) -> jax.Array:
    """`[b, t, hq, d] -> [b, hkv, t * g, d]`: the g query heads of a KV head stacked as rows."""
    b, t, hq, d = q.shape
    return q.reshape(b, t, kv_heads, hq // kv_heads, d).transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, -1, d)


def _unrows(o: jax.Array, t: int) -> jax.Array:
    b, hkv, m, d = o.shape
    return o.reshape(b, hkv, t, m // t, d).transpose(0, 2, 1, 3, 4).reshape(b, t, -1, d)


def _bounds(q_pos, groups, window, pos, layout):
    """Per row: the lowest position it sees (`lo [M]`) and the newest store position any row reads
    (`hi`): the store serves positions < pos - R, the recent window the rest."""
    row_pos = jnp.repeat(jnp.asarray(q_pos, jnp.int32), groups)
    lo = jnp.maximum(row_pos - window + 1, 0) if window else jnp.zeros_like(row_pos)
    return row_pos, lo, jnp.asarray(pos, jnp.int32) - layout.recent - 1


FULL, SPAN, PERSISTENT = 0, 1, 2  # kinds of the keys outside the store


def _extra_keys(layout, cache, k_new, v_new, pos, persistent):
    """Keys the store does not serve: the ring and the call's own in full precision, the call's
    span read quantized (`dequantized_span`), persistent slots. Returns (k, v `[b, K, hkv, d]`
    float32, positions `[K]`, kinds `[K]`)."""
    seq = k_new.shape[1]
    blocks = [(cache.recent_k, cache.recent_v, cache.recent_pos, FULL),
              (k_new, v_new, jnp.asarray(pos, jnp.int32) + jnp.arange(seq, dtype=jnp.int32), FULL)]
    span = dequantized_span(layout, cache, k_new, v_new, pos)
    if span is not None:
        blocks.append(span + (SPAN,))
    if persistent is not None:
        pk, pv = persistent
        b = k_new.shape[0]
        blocks.append((jnp.broadcast_to(pk, (b,) + pk.shape), jnp.broadcast_to(pv, (b,) + pv.shape),
                       jnp.zeros((pk.shape[0],), jnp.int32), PERSISTENT))
    k = jnp.concatenate([x[0].astype(jnp.float32) for x in blocks], axis=1)
    v = jnp.concatenate([x[1].astype(jnp.float32) for x in blocks], axis=1)
    kpos = jnp.concatenate([x[2] for x in blocks])
    kind = jnp.concatenate([jnp.full(x[2].shape, x[3], jnp.int32) for x in blocks])
    return k, v, kpos, kind


def _extra_visible(kind, kpos, row_pos, lo, pos, recent):
    """`[M, K]`: the query at row_pos reads a full-precision key within its last R tokens, a span
    key older than that (and not yet in the store), a persistent slot always."""
    kpos, row_pos, lo = kpos[None, :], row_pos[:, None], lo[:, None]
    full = (kpos >= jnp.maximum(lo, row_pos - recent)) & (kpos <= row_pos)
    span = (kpos >= jnp.maximum(lo, pos - recent)) & (kpos < row_pos - recent)
    return jnp.where(kind == PERSISTENT, True, jnp.where(kind == SPAN, span, full))


def _softmax_partial(scores, visible, values):
    """Masked `scores [b, h, M, K]` -> (max m, sum l, unnormalised acc = p @ values)."""
    s = jnp.where(visible, scores, _NEG)
    m = jnp.max(s, axis=-1)
    p = jnp.where(visible, jnp.exp(s - m[..., None]), 0.0)
    return m, jnp.sum(p, axis=-1), jnp.einsum("bhmk,bhkd->bhmd", p, values)


def _extra_partial(q_rows, row_pos, lo, layout, cache, k_new, v_new, pos, persistent):
    k, v, kpos, kind = _extra_keys(layout, cache, k_new, v_new, pos, persistent)
    visible = _extra_visible(kind, kpos, row_pos, lo, jnp.asarray(pos, jnp.int32), layout.recent)
    scores = jnp.einsum("bhmd,bkhd->bhmk", q_rows, k, precision="highest")
    return _softmax_partial(scores, visible[None, None], v.transpose(0, 2, 1, 3))


def _rotate(x, basis):
    """`x @ basis^T` per KV head (`basis [hkv, width, d]`; None = identity): a query into a part's domain."""
    return x if basis is None else jnp.einsum("bhmd,hed->bhme", x, basis, precision="highest")


def _unrotate(acc, basis):
    """`acc @ basis` per KV head (`[.., width] -> [.., d]`): accumulated value rows back to the model's domain."""
    return acc if basis is None else jnp.einsum("bhme,hed->bhmd", acc, basis, precision="highest")


def _attend(q, q_pos, cache: QuantizedKV, layout: CacheLayout, k_new, v_new, pos, window, persistent, store_partial):
    """The xla / pallas forms: `store_partial(q_parts, lo, hi) -> (m, l, value-part accs)`, merged
    with the full-precision partial by log-sum-exp."""
    _, t, hq, d = q.shape
    q_rows = _rows(q.astype(jnp.float32) * d ** -0.5, layout.kv_heads)
    row_pos, lo, hi = _bounds(q_pos, hq // layout.kv_heads, window, pos, layout)
    key_bases = codec(layout.key_codec).bases(cache.key_constants, "key")
    q_parts = tuple(_rotate(q_rows, basis) for basis in key_bases)
    m_s, l_s, accs = store_partial(q_parts, lo, hi)
    value_bases = codec(layout.value_codec).bases(cache.value_constants, "value")
    acc_s = sum(_unrotate(acc, basis) for acc, basis in zip(accs, value_bases, strict=True))
    m_f, l_f, acc_f = _extra_partial(q_rows, row_pos, lo, layout, cache, k_new, v_new, pos, persistent)
    m = jnp.maximum(m_s, m_f)
    w_s, w_f = jnp.exp(m_s - m)[..., None], jnp.exp(m_f - m)[..., None]
    o = (w_s * acc_s + w_f * acc_f) / (w_s * l_s[..., None] + w_f * l_f[..., None])
    return _unrows(o, t).astype(q.dtype)


# -- backends -------------------------------------------------------------------------------------------

def _reference(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent):
    """Dequantize the whole store, then dense masked attention over every key."""
    b, t, hq, d = q.shape

    def decoded(stored, constants, name, role):
        out = jax.vmap(lambda s, c: codec(name).decode(s, c, role), in_axes=(1, 0), out_axes=1)(stored, constants)
        return out.reshape(b, layout.kv_heads, layout.slots, d).transpose(0, 2, 1, 3)  # [b, S, hkv, d]

    k_full, v_full, kpos, kind = _extra_keys(layout, cache, k_new, v_new, pos, persistent)
    keys = jnp.concatenate([decoded(cache.keys, cache.key_constants, layout.key_codec, "key"), k_full], axis=1)
    values = jnp.concatenate([decoded(cache.values, cache.value_constants, layout.value_codec, "value"), v_full], 1)
    row_pos, lo, hi = _bounds(q_pos, hq // layout.kv_heads, window, pos, layout)
    slot_pos = cache.slot_pos.reshape(-1)
    in_store = (slot_pos[None, :] >= lo[:, None]) & (slot_pos[None, :] <= hi)
    in_extra = _extra_visible(kind, kpos, row_pos, lo, jnp.asarray(pos, jnp.int32), layout.recent)
    visible = jnp.concatenate([in_store, in_extra], axis=1)
    q_rows = _rows(q.astype(jnp.float32) * d ** -0.5, layout.kv_heads)
    scores = jnp.where(visible[None, None], jnp.einsum("bhmd,bkhd->bhmk", q_rows, keys, precision="highest"), -jnp.inf)
    o = jnp.einsum("bhmk,bkhd->bhmd", jax.nn.softmax(scores, axis=-1), values, precision="highest")
    return _unrows(o, t).astype(q.dtype)


def _store_scores(q_parts, key_rows, slot_pos, lo, hi):
    """Scores of query parts against key-row parts (summed over parts) and their visibility."""
    scores = sum(jnp.einsum("...md,...sd->...ms", qp, kr, precision="highest") for qp, kr in zip(q_parts, key_rows))
    visible = (slot_pos[None, :] >= lo[:, None]) & (slot_pos[None, :] <= hi)
    return scores, visible


def _xla(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent):
    def store_partial(q_parts, lo, hi):
        key_rows, _ = rows_and_bases(layout, cache.keys, cache.key_constants, "key")
        value_rows, _ = rows_and_bases(layout, cache.values, cache.value_constants, "value")
        scores, visible = _store_scores(q_parts, key_rows, cache.slot_pos.reshape(-1), lo, hi)
        s = jnp.where(visible, scores, _NEG)
        m = jnp.max(s, axis=-1)
        p = jnp.where(visible, jnp.exp(s - m[..., None]), 0.0)
        accs = tuple(jnp.einsum("bhms,bhsd->bhmd", p, vr, precision="highest") for vr in value_rows)
        return m, jnp.sum(p, axis=-1), accs

    return _attend(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent, store_partial)


def interpret_mode() -> bool:
    """Pallas kernels run in the interpreter on CPU, or everywhere with MEMZOO_PALLAS_INTERPRET=1."""
    return os.environ.get("MEMZOO_PALLAS_INTERPRET") == "1" or jax.devices()[0].platform == "cpu"


def _splits(num_tiles: int) -> int:
    """The most splits of the cache length (at most MAX_SPLITS) that divide its tiles evenly."""
    return max(s for s in range(1, min(num_tiles, MAX_SPLITS) + 1) if num_tiles % s == 0)


def _pallas_store_partial(layout, cache, q_parts, lo, hi):
    """The store's softmax partial by a Pallas kernel: grid (batch, KV head, split); each program
    walks its split's tiles with an online softmax and writes (m, l, acc per value part); the
    splits are merged here."""
    from jax.experimental import pallas as pl  # only where the kernel runs: importing Pallas registers
    # its MLIR dialects in every process that imports memzoo otherwise (docs/fidelity.md)
    b, h, m_rows, d = q_parts[0].shape
    g = layout.group
    tile_tokens = min(layout.slots, TILE)
    tile_groups = tile_tokens // g
    num_tiles = layout.slots // tile_tokens
    splits = _splits(num_tiles)
    tiles_per_split = num_tiles // splits
    split_groups = tiles_per_split * tile_groups
    key_codec, value_codec = codec(layout.key_codec), codec(layout.value_codec)
    k_leaves, k_tree = jax.tree.flatten(cache.keys)
    v_leaves, v_tree = jax.tree.flatten(cache.values)
    kc_leaves, kc_tree = jax.tree.flatten(cache.key_constants)
    vc_leaves, vc_tree = jax.tree.flatten(cache.value_constants)
    value_bases = value_codec.bases(cache.value_constants, "value")
    value_widths = [d if basis is None else basis.shape[-2] for basis in value_bases]
    n_value_parts = len(value_widths)
    lo_hi = jnp.stack([lo, jnp.broadcast_to(hi, lo.shape)])  # [2, M]

    def kernel(*refs):
        it = iter(refs)
        q_refs = [next(it) for _ in q_parts]
        bounds_ref, slot_ref = next(it), next(it)
        k_refs = [next(it) for _ in k_leaves]
        v_refs = [next(it) for _ in v_leaves]
        kc_refs = [next(it) for _ in kc_leaves]
        vc_refs = [next(it) for _ in vc_leaves]
        m_ref, l_ref = next(it), next(it)
        acc_refs = [next(it) for _ in range(n_value_parts)]
        qs = [r[0, 0] for r in q_refs]
        row_lo, row_hi = bounds_ref[0], bounds_ref[1]
        k_constants = jax.tree.unflatten(kc_tree, [r[0] for r in kc_refs])
        v_constants = jax.tree.unflatten(vc_tree, [r[0] for r in vc_refs])

        def tile(i, carry):
            m_run, l_run, accs = carry
            groups = pl.ds(i * tile_groups, tile_groups)
            k_tile = jax.tree.unflatten(k_tree, [r[0, 0, groups] for r in k_refs])
            v_tile = jax.tree.unflatten(v_tree, [r[0, 0, groups] for r in v_refs])
            key_rows = [x.reshape(tile_tokens, x.shape[-1]) for x in key_codec.rows(k_tile, k_constants, "key")]
            value_rows = [x.reshape(tile_tokens, x.shape[-1]) for x in value_codec.rows(v_tile, v_constants, "value")]
            slot_pos = slot_ref[groups].reshape(tile_tokens)
            scores = sum(jnp.dot(qp, kr.T, preferred_element_type=jnp.float32, precision="highest")
                         for qp, kr in zip(qs, key_rows))
            visible = (slot_pos[None, :] >= row_lo[:, None]) & (slot_pos[None, :] <= row_hi[:, None])
            s = jnp.where(visible, scores, _NEG)
            m_new = jnp.maximum(m_run, jnp.max(s, axis=-1))
            p = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)
            correction = jnp.exp(m_run - m_new)
            accs = tuple(a * correction[:, None] + jnp.dot(p, vr, preferred_element_type=jnp.float32,
                                                           precision="highest")
                         for a, vr in zip(accs, value_rows))
            return m_new, l_run * correction + jnp.sum(p, axis=-1), accs

        init = (jnp.full((m_rows,), _NEG, jnp.float32), jnp.zeros((m_rows,), jnp.float32),
                tuple(jnp.zeros((m_rows, width), jnp.float32) for width in value_widths))
        m_run, l_run, accs = jax.lax.fori_loop(0, tiles_per_split, tile, init)
        m_ref[0, 0, 0] = m_run
        l_ref[0, 0, 0] = l_run
        for ref, acc in zip(acc_refs, accs):
            ref[0, 0, 0] = acc

    def per_head_block(x):  # a [b, h, ...] array: one (batch, head) block
        return pl.BlockSpec((1, 1) + x.shape[2:], lambda i, j, s, n=x.ndim: (i, j) + (0,) * (n - 2))

    def store_block(x):  # a store leaf [b, h, S / G, ...]: one split of groups
        return pl.BlockSpec((1, 1, split_groups) + x.shape[3:], lambda i, j, s, n=x.ndim: (i, j, s) + (0,) * (n - 3))

    def constant_block(x):  # a constant [h, ...]: one head
        return pl.BlockSpec((1,) + x.shape[1:], lambda i, j, s, n=x.ndim: (j,) + (0,) * (n - 1))

    in_specs = ([per_head_block(x) for x in q_parts]
                + [pl.BlockSpec(lo_hi.shape, lambda i, j, s: (0, 0)),
                   pl.BlockSpec((split_groups, g), lambda i, j, s: (s, 0))]
                + [store_block(x) for x in k_leaves + v_leaves]
                + [constant_block(x) for x in kc_leaves + vc_leaves])
    stat = jax.ShapeDtypeStruct((b, h, splits, m_rows), jnp.float32)
    accs = [jax.ShapeDtypeStruct((b, h, splits, m_rows, width), jnp.float32) for width in value_widths]
    out_specs = ([pl.BlockSpec((1, 1, 1, m_rows), lambda i, j, s: (i, j, s, 0))] * 2
                 + [pl.BlockSpec((1, 1, 1, m_rows, width), lambda i, j, s: (i, j, s, 0, 0)) for width in value_widths])
    outs = pl.pallas_call(kernel, out_shape=[stat, stat, *accs], grid=(b, h, splits),
                          in_specs=in_specs, out_specs=out_specs, interpret=interpret_mode(),
                          name="quantized_decode_attention")(*q_parts, lo_hi, cache.slot_pos, *k_leaves, *v_leaves,
                                                              *kc_leaves, *vc_leaves)
    m_split, l_split, acc_split = outs[0], outs[1], outs[2:]
    m = jnp.max(m_split, axis=2)
    weight = jnp.exp(m_split - m[:, :, None])
    accs = tuple(jnp.sum(weight[..., None] * a, axis=2) for a in acc_split)
    return m, jnp.sum(weight * l_split, axis=2), accs


def _pallas(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent):
    return _attend(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent,
                   functools.partial(_pallas_store_partial, layout, cache))


# run(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent) -> [b, t, hq, d] in q's dtype
IMPLEMENTATIONS = Implementations("quantized_attention", [
    Implementation("reference", _reference, doc="dequantize the whole cache, then dense attention (the oracle)"),
    Implementation("xla", _xla, doc="scores in the codecs' rotated domains, one un-rotation per query, pure JAX"),
    Implementation("pallas", _pallas, doc="flash-decoding Pallas kernel over the packed cache (interpret on CPU)"),
], auto=("xla",))


def quantized_attention(q: jax.Array, q_pos: jax.Array, cache: QuantizedKV, layout: CacheLayout, k_new: jax.Array,
                        v_new: jax.Array, pos: jax.Array, *, window: int = 0,
                        persistent: tuple[jax.Array, jax.Array] | None = None, backend="auto") -> jax.Array:
    """Causal attention of `q: [batch, Tq, Hq, d]` (positions `q_pos [Tq]`) to a quantized cache
    holding positions < `pos` and to the call's own `k_new, v_new: [batch, Tq, Hkv, d]` (positions
    pos ..), scaled by 1/sqrt(d). See the module docstring for the backends."""
    b, t, hq, d = q.shape
    if k_new.shape != (b, t, layout.kv_heads, d) or v_new.shape != k_new.shape:
        raise ValueError(f"quantized_attention: k_new and v_new must be [batch, Tq, kv_heads, d] = "
                         f"{(b, t, layout.kv_heads, d)}; got {k_new.shape} and {v_new.shape}")
    if d != layout.head_dim or hq % layout.kv_heads:
        raise ValueError(f"quantized_attention: q {q.shape} must have head_dim {layout.head_dim} and a multiple "
                         f"of {layout.kv_heads} heads (the cache's layout)")
    impl = IMPLEMENTATIONS.select(backend)
    return impl.run(q, q_pos, cache, layout, k_new, v_new, pos, window, persistent)


__all__ = ["IMPLEMENTATIONS", "interpret_mode", "quantized_attention"]

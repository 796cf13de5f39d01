"""Self-attention over a full sequence, with one entry point for every implementation.

`attend(q, k, v, *, segment_ids, window, persistent, implementation)` computes causal
(optionally sliding-window, optionally document-masked) softmax attention, with optional
persistent key/value slots every query sees (Titans Eq. 19). Implementations:

- "xla": `jax.nn.dot_product_attention` with an explicit mask: builds the [B, H, T, S] scores
  (T^2 memory), any features. Reference for the others.
- "blockwise": pure JAX, query blocks of `block` tokens in a checkpointed `lax.scan`; each block
  sees only the keys it can reach (its window, or everything before it), so forward and backward
  hold one block's scores: O(T * block) memory for full attention, O(T * window) compute and
  memory for sliding windows. Runs on every platform.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (a flash kernel on NVIDIA GPUs):
  causal and sliding windows in bf16/fp16, but no document mask short of a dense T^2 bias and no
  persistent slots, so "auto" takes it only without either.
- "pallas_triton": Pallas' Triton flash kernel (zoo.layers.flash; Pallas' interpreter on CPU):
  causal with document masks in O(T) memory, persistent slots merged by log-sum-exp; no sliding
  window. Opt-in: "auto" does not take it until it has been measured on a GPU.
- "tokamax": tokamax's `dot_product_attention` (zoo.layers.tokamax_attention; an optional
  dependency): its flash kernels on GPU (Mosaic GPU, Triton) and TPU (Mosaic), its linear-memory
  `xla_chunked` form on CPU; every feature (documents as a dense boolean mask, persistent slots as
  keys in front). Opt-in like pallas_triton.
- "auto": cudnn where it applies on a GPU, else blockwise for sequences longer than one block,
  else xla.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from zoo.layers import flash, tokamax_attention

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "pallas_triton", "tokamax")


def choose_implementation(requested: str, *, platform: str, seq: int, block: int, segment_ids, persistent,
                          dtype, window: int = 0) -> str:
    """The implementation `attend` runs for `requested` ("auto" resolves by platform and features)."""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {requested!r}; allowed: {', '.join(IMPLEMENTATIONS)}")
    if requested == "pallas_triton" and (window or not flash.available()):
        why = f"a sliding window ({window})" if window else "this jax, which ships no Pallas GPU attention"
        raise ValueError(f"attention implementation 'pallas_triton' does not take {why}; use 'blockwise' "
                         "(or 'auto')")
    if requested == "tokamax" and not tokamax_attention.available():
        raise ValueError("attention implementation 'tokamax' needs the tokamax package: pip install 'memzoo[tokamax]' "
                         "(or pick another implementation, e.g. 'auto')")
    cudnn_ok = segment_ids is None and persistent is None and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if requested == "cudnn" and not cudnn_ok:
        raise ValueError("attention implementation 'cudnn' takes bf16/fp16 inputs without segment_ids or "
                         "persistent slots; use 'blockwise' (or 'auto') for packed documents and persistent memory")
    if requested != "auto":
        return requested
    if platform == "gpu" and cudnn_ok:
        return "cudnn"
    return "blockwise" if seq > block else "xla"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: jax.Array | None = None, window: int = 0,
           persistent: tuple[jax.Array, jax.Array] | None = None, implementation: str = "auto",
           block: int = 512) -> jax.Array:
    """Causal self-attention `q: [B, T, Hq, d]`, `k, v: [B, T, Hkv, d]` (Hq a multiple of Hkv) ->
    `[B, T, Hq, d]`, scaled by 1/sqrt(d).

    segment_ids: [B, T], queries see keys of their own document only. window: W > 0, query t sees
    keys t-W+1 .. t. persistent: (pk, pv) each [P, Hkv, d], slots every query sees (no rotary).
    """
    b, t, _, _ = q.shape
    if k.shape[:2] != (b, t) or v.shape != k.shape:
        raise ValueError(f"attend is self-attention: q {q.shape}, k {k.shape}, v {v.shape} must share [B, T]")
    impl = choose_implementation(implementation, platform=jax.devices()[0].platform, seq=t, block=block,
                                 segment_ids=segment_ids, persistent=persistent, dtype=q.dtype, window=window)
    if impl == "pallas_triton":
        return flash.flash_attention(q, k, v, segment_ids, persistent)
    if impl == "tokamax":
        return tokamax_attention.tokamax_attention(q, k, v, segment_ids, window, persistent)
    if impl == "cudnn":
        local = (window - 1, 0) if window else None
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local, implementation="cudnn")
    if impl == "xla":
        pos = jnp.arange(t)
        return attend_at(q, k, v, q_pos=pos, k_pos=pos, q_segment=segment_ids, k_segment=segment_ids, window=window,
                         persistent=persistent)
    return _blockwise(q, k, v, segment_ids, window, persistent, block)


def attend_at(q: jax.Array, k: jax.Array, v: jax.Array, *, q_pos: jax.Array, k_pos: jax.Array,
              q_segment: jax.Array | None = None, k_segment: jax.Array | None = None, window: int = 0,
              persistent: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """Dense causal attention with explicit positions: the one place masks are built (full
    sequences through `attend`, KV-cache steps, Titans MAC's segment attention).

    q: [B, Tq, Hq, d] at positions `q_pos [Tq]`; k, v: [B, S, Hkv, d] at `k_pos [S]` (-1 = an empty
    slot). Query i sees key j if 0 <= k_pos[j] <= q_pos[i], within `window` when > 0, and of its
    own document when segments are given (`q_segment [B, Tq]`, `k_segment [B, S]`); persistent
    slots (pk, pv) [P, Hkv, d] are seen by every query. XLA's dense form ([B, H, Tq, S + P] scores).
    """
    mask = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
    if window:
        mask &= q_pos[:, None] - k_pos[None, :] < window
    mask = mask[None, None]
    if q_segment is not None:
        mask = mask & (q_segment[:, :, None] == k_segment[:, None, :])[:, None]
    if persistent is not None:
        pk, pv = persistent
        n_p = pk.shape[0]
        k = jnp.concatenate([jnp.broadcast_to(pk.astype(k.dtype), (k.shape[0],) + pk.shape), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(pv.astype(v.dtype), (v.shape[0],) + pv.shape), v], axis=1)
        mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (n_p,), bool), jnp.broadcast_to(
            mask, mask.shape[:-1] + (k_pos.shape[0],))], axis=-1)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def _blockwise(q, k, v, segment_ids, window, persistent, block):
    """Query blocks of `block` tokens; block i sees the key span [i*block - back, (i+1)*block) with
    `back` = the window rounded up to whole blocks (all earlier blocks without a window)."""
    b, t = q.shape[:2]
    n = math.ceil(t / block)
    size = n * block
    back_blocks = n - 1 if not window else min(n - 1, math.ceil((window - 1) / block))
    back = back_blocks * block
    span = back + block
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    pad_q = lambda x: jnp.pad(x, [(0, 0), (0, size - t)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    pad_kv = lambda x: jnp.pad(x, [(0, 0), (back, size - t)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    qs = pad_q(q).reshape((b, n, block) + q.shape[2:])
    # padded queries join the last document, so no query row is fully masked (no NaN to backprop)
    q_seg = jnp.pad(seg, [(0, 0), (0, size - t)], mode="edge").reshape(b, n, block)
    kp, vp, k_seg = pad_kv(k), pad_kv(v), pad_kv(seg)
    k_pos_all = jnp.concatenate([jnp.full((back,), -1), jnp.arange(t), jnp.full((size - t,), -1)])

    @jax.checkpoint
    def one_block(_, xs):
        i, qb, qsb = xs
        start = i * block  # in the key buffer, which is shifted by `back`
        kb = jax.lax.dynamic_slice_in_dim(kp, start, span, axis=1)
        vb = jax.lax.dynamic_slice_in_dim(vp, start, span, axis=1)
        ksb = jax.lax.dynamic_slice_in_dim(k_seg, start, span, axis=1)
        k_pos = jax.lax.dynamic_slice_in_dim(k_pos_all, start, span)
        q_pos = i * block + jnp.arange(block)
        return None, attend_at(qb, kb, vb, q_pos=q_pos, k_pos=k_pos, q_segment=qsb, k_segment=ksb, window=window,
                               persistent=persistent)

    _, out = jax.lax.scan(one_block, None, (jnp.arange(n), jnp.moveaxis(qs, 1, 0), jnp.moveaxis(q_seg, 1, 0)))
    return jnp.moveaxis(out, 0, 1).reshape((b, size) + q.shape[2:])[:, :t]

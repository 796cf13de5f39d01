"""Attention through tokamax's `dot_product_attention` (Google's Pallas kernel library: Mosaic GPU
on Hopper, Triton on other NVIDIA GPUs, Mosaic on TPU). tokamax is an optional dependency
(`pip install 'memzoo[tokamax]'`); nothing imports it until this implementation runs.

tokamax's public API takes causality, a (W-1, 0) local window and a dense boolean mask, and no
document ids or slots every query sees. So:

- persistent slots (Titans Eq. 19) become P extra keys in front of the sequence, with P all-zero
  queries in front of the queries (their outputs are dropped): under tokamax's causal mask query
  P + t then sees every slot and keys 0..t, and the slots get gradients like any key;
- packed documents become a dense `[B, 1, P+T, P+T]` boolean mask (one byte per query-key pair:
  64 MB per sequence of 8192 tokens), built only when there are documents, or slots together with
  a window (the window must not hide the slots, so it moves into the mask too). Causal attention
  without documents passes no mask at all.

On CPU the kernel library's `xla_chunked` implementation runs (linear memory; what the tests
check); on GPUs and TPUs tokamax chooses its own kernel.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp

# tokamax's implementation per platform; None lets tokamax pick (its flash kernels on GPU / TPU)
PLATFORM_IMPLEMENTATION = {"cpu": "xla_chunked"}


def available() -> bool:
    return importlib.util.find_spec("tokamax") is not None


def tokamax_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None,
                      window: int = 0, persistent: tuple[jax.Array, jax.Array] | None = None,
                      implementation: str | None = None) -> jax.Array:
    """Causal self-attention `q: [B, T, Hq, d]`, `k, v: [B, T, Hkv, d]` (Hq a multiple of Hkv) ->
    `[B, T, Hq, d]`. `segment_ids: [B, T]` or None; `window`: W > 0, query t sees keys t-W+1..t;
    `persistent: (pk, pv)` each `[P, Hkv, d]` or None. `implementation`: a tokamax implementation
    name; None = `PLATFORM_IMPLEMENTATION` for this platform."""
    import tokamax
    from absl import flags

    if not flags.FLAGS.is_parsed():  # tokamax reads its options from absl flags and would parse sys.argv
        flags.FLAGS.mark_as_parsed()  # (train.py's or pytest's) on first use: keep their defaults instead

    b, t = q.shape[:2]
    if implementation is None:
        implementation = PLATFORM_IMPLEMENTATION.get(jax.devices()[0].platform)
    n_p = 0 if persistent is None else persistent[0].shape[0]
    if n_p:
        pk, pv = persistent
        q = jnp.concatenate([jnp.zeros((b, n_p) + q.shape[2:], q.dtype), q], axis=1)
        k = jnp.concatenate([jnp.broadcast_to(pk.astype(k.dtype), (b,) + pk.shape), k], axis=1)
        v = jnp.concatenate([jnp.broadcast_to(pv.astype(v.dtype), (b,) + pv.shape), v], axis=1)
    mask, local = None, ((window - 1, 0) if window else None)
    if segment_ids is not None or (n_p and window):
        pos = jnp.arange(n_p + t) - n_p  # slots at negative positions
        is_slot = pos[None, :] < 0
        mask = jnp.ones((1, n_p + t, n_p + t), bool)
        if segment_ids is not None:
            seg = jnp.concatenate([jnp.zeros((b, n_p), jnp.int32), segment_ids.astype(jnp.int32)], axis=1)
            mask = seg[:, :, None] == seg[:, None, :]
        if window:
            mask &= pos[:, None] - pos[None, :] < window
            local = None
        mask = (mask | is_slot)[:, None]
    out = tokamax.dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=local,
                                        implementation=implementation)
    return out[:, n_p:]

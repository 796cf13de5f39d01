"""TNT's query-key projection (TNT Eq. 7, spec §4.2): the local memories read P_t q_t instead of q_t,

    P_t = sum_tau k_tau k_tau^T     over the keys since the last reset, token t included,

so a query is projected onto the span of the keys the memory was trained on. With unit keys,
P_t q_t = P_a q_t + sum_{a < tau <= t} (k_tau . q_t) k_tau: a causal linear attention with the keys as
values, carried between chunks as the [dk, dk] state P (and the count of its keys, for the optional
1/count scale: spec §4.8 item 2). Where P resets is the caller's choice (shard, document, chunk).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCALES = ("none", "count")


def project_queries(q: jax.Array, k: jax.Array, resets: jax.Array, valid: jax.Array, qk: jax.Array,
                    count: jax.Array, *, scale: str = "none", chunk: int = 64):
    """P_t q_t for every token.

    q, k: [B, H, T, d]; resets: [B, T] bool, P restarts at 0 before token t; valid: [B, T] bool,
    token t's key joins P (padding: False); qk: [B, H, d, d] and count: [B, H] the carried P and
    its number of keys. scale: "none" or "count" (P_t / its number of keys; 0 keys reads 0).
    Computed in chunks of `chunk` tokens (any size gives the same numbers).
    Returns (P_t q_t [B, H, T, d] in q's dtype, P [B, H, d, d], count [B, H]) after the last token.
    """
    if scale not in SCALES:
        raise ValueError(f"project_queries: scale={scale!r}; allowed: {', '.join(SCALES)}")
    b, h, t, d = q.shape
    c = min(chunk, t)
    n = math.ceil(t / c)
    pad = n * c - t

    def chunks(x, axis):  # [..., T, ...] on `axis` -> [n, ..., C, ...]
        x = jnp.pad(x, [(0, pad if i == axis else 0) for i in range(x.ndim)])
        x = x.reshape(x.shape[:axis] + (n, c) + x.shape[axis + 1:])
        return jnp.moveaxis(x, axis, 0)

    xs = (chunks(q.astype(jnp.float32), 2), chunks(k.astype(jnp.float32), 2), chunks(resets, 1),
          chunks(valid, 1))  # padding: no reset, no key
    causal = jnp.tril(jnp.ones((c, c), bool))

    def body(carry, x):
        p, cnt = carry  # [B, H, d, d], [B, H]
        qc, kc, rc, vc = x  # [B, H, C, d] x2, [B, C] x2
        run = jnp.cumsum(rc, axis=-1)  # [B, C]: 0 = the carried P's run
        same = (run[:, :, None] == run[:, None, :]) & causal & vc[:, None, :]  # [B, C(t), C(tau)]
        carried = (run == 0)[:, None, :, None]  # [B, 1, C, 1]
        scores = jnp.einsum("bhtd,bhsd->bhts", qc, kc) * same[:, None]
        proj = jnp.where(carried, jnp.einsum("bhtd,bhde->bhte", qc, p), 0.0) + jnp.einsum("bhts,bhsd->bhtd",
                                                                                           scores, kc)
        keys = jnp.where(carried[..., 0], cnt[:, :, None], 0.0) + jnp.sum(same, axis=-1)[:, None].astype(jnp.float32)
        last = (run == run[:, -1:]) & vc  # [B, C]: the keys of the run the chunk ends in
        kept = (run[:, -1] == 0)[:, None]  # [B, 1]: no reset in the chunk
        p = jnp.where(kept[..., None, None], p, 0.0) + jnp.einsum("bhsd,bhse->bhde", kc * last[:, None, :, None], kc)
        cnt = jnp.where(kept, cnt, 0.0) + jnp.sum(last, axis=-1)[:, None].astype(jnp.float32)
        if scale == "count":
            proj = proj / jnp.maximum(keys, 1.0)[..., None]
        return (p, cnt), proj

    (qk, count), proj = jax.lax.scan(body, (qk.astype(jnp.float32), count.astype(jnp.float32)), xs)
    proj = jnp.moveaxis(proj, 0, 2).reshape(b, h, n * c, d)[:, :, :t]
    return proj.astype(q.dtype), qk, count

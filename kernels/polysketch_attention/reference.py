"""PolySketch attention written out densely (the oracle): every pair's weight in one
`[batch, heads, seq, seq]` matrix, no blocks carried. With d(t) the document of token t and
B(t) = t // block its block:

    w_ts = <local_q_t, local_k_s>^p   if local features are given and B(s) = B(t)
           <phi(q_t), phi(k_s)>^2      otherwise                      (s <= t, d(s) = d(t))
    o_t = (sum_s w_ts v_s + [d(t) = first] Phi(q_t)^T S_0) / (1 + sum_s w_ts + [d(t) = first] Phi(q_t)^T z_0)

and the final state is the last document's: S = [last = first] S_0 + sum_{s in last} Phi(k_s) v_s^T,
z likewise (Phi = phi (x) phi; the initial state belongs to the call's first document)."""

from __future__ import annotations

import jax.numpy as jnp

from kernels.polysketch_attention.chunked import tensor_square


def dense_polysketch_attention(phi_q, phi_k, v, local_q, local_k, degree: int, block_size: int, state, norm,
                               starts=None):
    """Same contract as `chunk_polysketch_attention` (fp32 inputs), O(seq^2) memory per head."""
    b, t, h, _ = v.shape
    doc = jnp.zeros((b, t), jnp.int32) if starts is None else jnp.cumsum(starts[:, :, 0].astype(jnp.int32), axis=1)
    pos = jnp.arange(t)
    mask = (pos[None, :, None] >= pos[None, None, :]) & (doc[:, :, None] == doc[:, None, :])     # [b, t, s]
    w = jnp.einsum("bthr,bshr->bhts", phi_q, phi_k) ** 2
    if local_q is not None:
        same_block = (pos[:, None] // block_size == pos[None, :] // block_size)[None, None]
        w = jnp.where(same_block, jnp.einsum("bthd,bshd->bhts", local_q, local_k) ** degree, w)
    w = jnp.where(mask[:, None], w, 0.0)
    first = (doc == 0)[:, :, None, None]                                                          # [b, t, 1, 1]
    big_q, big_k = tensor_square(phi_q), tensor_square(phi_k)
    num = jnp.einsum("bhts,bshd->bthd", w, v) + jnp.where(first, jnp.einsum("bthf,bhfd->bthd", big_q, state), 0.0)
    den = jnp.sum(w, axis=-1).transpose(0, 2, 1) + jnp.where(
        first[..., 0], jnp.einsum("bthf,bhf->bth", big_q, norm), 0.0)
    last = (doc == doc[:, -1:])[:, :, None, None]                                                # [b, t, 1, 1]
    keep_initial = (doc[:, -1] == 0)[:, None, None]
    big_k = jnp.where(last, big_k, 0.0)
    final_state = jnp.where(keep_initial[..., None], state, 0.0) + jnp.einsum("bthf,bthd->bhfd", big_k, v)
    final_norm = jnp.where(keep_initial, norm, 0.0) + jnp.sum(big_k, axis=1)
    return num / (1.0 + den)[..., None], (final_state, final_norm)

"""PolySketchFormer's block-based causal algorithm (Kacham, Mirrokni & Zhong 2024, §2.3 of spec
msssm-polysketch-quantized-attention-pallas; "lower-triangular multiplication") in pure JAX.

With Phi(x) = phi(x) (x) phi(x) `[r^2]` (self-tensoring, so <Phi(q), Phi(k)> = <phi(q), phi(k)>^2
>= 0), blocks of C tokens and the state carried between blocks

    S = sum_j Phi(k_j) v_j^T  `[r^2, dv]`,    z = sum_j Phi(k_j)  `[r^2]`     (earlier blocks' keys)

a block's rows are, for the in-block weights w_ts (t >= s, one document):

    w_ts = <local_q_t, local_k_s>^p   (local exact attention, §2.3 "mixed"), else <phi(q_t), phi(k_s)>^2
    o_t = (sum_s w_ts v_s + Phi(q_t)^T S) / (1 + sum_s w_ts + Phi(q_t)^T z)                  (§2.1-2.2)

and then S += sum_s Phi(k_s) v_s^T, z += sum_s Phi(k_s) over the block. Packed documents: a row
reads the carried (S, z) only if its document started before the block; a document starting in
the block restarts (S, z) from zero (an attention state: a new document sees no earlier token),
and only its rows fold in. Zero rows (padding) are neutral: a zero key has zero weight and
features. Written for any leading axes, the same function runs in the xla backend and as the
chunk step of the Pallas kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from kernels.common import chunk_scan, in_chunk_documents, last_entry


def tensor_square(phi: jax.Array) -> jax.Array:
    """`[..., r] -> [..., r^2]`: phi (x) phi, entry a*r + b = phi_a phi_b, so
    <Phi(q), Phi(k)> = <phi(q), phi(k)>^2."""
    return (phi[..., :, None] * phi[..., None, :]).reshape(phi.shape[:-1] + (phi.shape[-1] ** 2,))


def block_weights(phi_q: jax.Array, phi_k: jax.Array, local_q: jax.Array | None, local_k: jax.Array | None,
                  degree: int) -> jax.Array:
    """In-block weights before masking, `[..., C, C]`: <local_q, local_k>^degree when the local
    features are given (exact local attention), else the sketched <phi_q, phi_k>^2."""
    if local_q is not None:
        return jnp.einsum("...td,...sd->...ts", local_q, local_k) ** degree
    return jnp.einsum("...tr,...sr->...ts", phi_q, phi_k) ** 2


def rows_times_vector(x: jax.Array, vec: jax.Array) -> jax.Array:
    """`x: [..., C, f]` times `vec: [..., f]` -> `[..., C]` as a matrix-vector product (XLA)."""
    return jnp.einsum("...tf,...f->...t", x, vec)


def rows_dot_vector(x: jax.Array, vec: jax.Array) -> jax.Array:
    """The same as a product and a row sum: inside Pallas kernels (Triton's dots are 2-D only)."""
    return jnp.sum(x * vec[..., None, :], axis=-1)


def polysketch_block(state: jax.Array, norm: jax.Array, chunk: tuple, degree: int,
                     matvec: Callable = rows_times_vector) -> tuple[tuple, jax.Array]:
    """One block of the algorithm above for any leading axes (`[batch, heads]` in the xla backend,
    none in a Pallas program). `state: [..., r^2, dv]`, `norm: [..., r^2]` (fp32); `chunk =
    (phi_q, phi_k: [..., C, r], v: [..., C, dv], starts: [..., C] bool or None, local_q, local_k:
    [..., C, dl] or None)`, fp32; `matvec`: how the normaliser is read (`rows_times_vector` or, in
    a kernel, `rows_dot_vector`). Returns ((S, z) after the block, o `[..., C, dv]`)."""
    phi_q, phi_k, v, starts, local_q, local_k = chunk
    c = v.shape[-2]
    mask = lax.broadcasted_iota(jnp.int32, (c, c), 1) <= lax.broadcasted_iota(jnp.int32, (c, c), 0)
    big_q, big_k = tensor_square(phi_q), tensor_square(phi_k)            # [..., C, r^2]
    reads_q = big_q
    if starts is not None:
        last, same = in_chunk_documents(starts)
        mask = mask & same
        reads_q = jnp.where((last < 0)[..., None], big_q, 0.0)           # the document started before the block
        big_k = jnp.where((last == last_entry(last)[..., None])[..., None], big_k, 0.0)  # the last document's rows
    w = jnp.where(mask, block_weights(phi_q, phi_k, local_q, local_k, degree), 0.0)
    num = jnp.einsum("...ts,...sd->...td", w, v) + jnp.einsum("...tf,...fd->...td", reads_q, state)
    den = jnp.sum(w, axis=-1) + matvec(reads_q, norm)
    if starts is not None:  # a document starts in the block: (S, z) restart from zero after the reads
        fresh = jnp.max(starts.astype(jnp.float32), axis=-1) > 0.5
        state = jnp.where(fresh[..., None, None], 0.0, state)
        norm = jnp.where(fresh[..., None], 0.0, norm)
    state = state + jnp.einsum("...tf,...td->...fd", big_k, v)
    norm = norm + jnp.sum(big_k, axis=-2)
    return (state, norm), num / (1.0 + den)[..., None]


def chunk_polysketch_attention(phi_q, phi_k, v, local_q, local_k, degree: int, block_size: int, state, norm,
                               starts=None):
    """The block algorithm over a sequence (fp32, validated): `phi_q, phi_k: [batch, seq, heads, r]`,
    `v: [batch, seq, heads, dv]`, `local_q, local_k: [batch, seq, heads, dl]` or None, `state:
    [batch, heads, r^2, dv]`, `norm: [batch, heads, r^2]`, `starts: [batch, seq, heads]` bool or None.
    Blocks of `block_size` tokens from the call's first token (a ragged last block is shorter).
    Returns (o `[batch, seq, heads, dv]`, (S, z) after the last token)."""
    (state, norm), o = chunk_scan(lambda carry, chunk: polysketch_block(*carry, chunk, degree), (state, norm),
                                  (phi_q, phi_k, v, starts, local_q, local_k), block_size)
    return o, (state, norm)

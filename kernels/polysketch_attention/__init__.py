"""`polysketch_attention`: PolySketchFormer's causal polynomial-sketch attention (Kacham, Mirrokni &
Zhong 2024) by the block algorithm, with exact local attention inside blocks as an option."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kernels.common import (
    ACCELERATORS,
    Implementation,
    Implementations,
    as_fp32,
    check_chunk_size,
    check_shape,
    document_starts,
)
from kernels.polysketch_attention.chunked import chunk_polysketch_attention, tensor_square
from kernels.polysketch_attention.pallas import pallas_polysketch_attention
from kernels.polysketch_attention.pallas import probe as _pallas_probe
from kernels.polysketch_attention.reference import dense_polysketch_attention

__all__ = ["IMPLEMENTATIONS", "chunk_polysketch_attention", "dense_polysketch_attention", "polysketch_attention",
           "tensor_square"]

FEATURES = "[batch, seq, heads, r]"


def _fp32_run(form):
    def run(phi_q, phi_k, v, local_q, local_k, degree, block_size, state, norm, starts):
        local = (None, None) if local_q is None else as_fp32(local_q, local_k)
        o, final = form(*as_fp32(phi_q, phi_k, v), *local, degree, block_size, state, norm, starts)
        return o.astype(jnp.asarray(v).dtype), final

    return run


def _pallas(phi_q, phi_k, v, local_q, local_k, degree, block_size, state, norm, starts):
    o, final = pallas_polysketch_attention(phi_q, phi_k, v, local_q, local_k, degree, block_size, state, norm, starts)
    return o.astype(jnp.asarray(v).dtype), final


# run(phi_q, phi_k, v, local_q, local_k, degree, block_size, state, norm, starts)
#     -> (o in v's dtype, (S, z) fp32)
IMPLEMENTATIONS = Implementations("polysketch_attention", [
    Implementation("reference", _fp32_run(dense_polysketch_attention),
                   doc="every pair's weight in one dense [seq, seq] matrix per head (the oracle)"),
    Implementation("xla", _fp32_run(chunk_polysketch_attention),
                   doc="the block algorithm in pure JAX: exact in-block weights, (S, z) carried between blocks"),
    Implementation("pallas", _pallas, doc="the block algorithm as Pallas forward and backward kernels "
                   "(interpreted on CPU)", auto_platforms=ACCELERATORS, probe=_pallas_probe),
], auto=("pallas", "xla"))


def _float(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return x


def polysketch_attention(phi_q: jax.Array, phi_k: jax.Array, v: jax.Array, *, local_q: jax.Array | None = None,
                         local_k: jax.Array | None = None, degree: int = 4, block_size: int = 256,
                         initial_state: tuple[jax.Array, jax.Array] | None = None, output_final_state: bool = False,
                         segment_ids: jax.Array | None = None, backend: str | Sequence[str] = "auto",
                         ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Causal polynomial-sketch attention (PolySketchFormer §2.1-2.3), per head:

        w_ts = <phi(q_t), phi(k_s)>^2     (s <= t, one document; = <Phi(q_t), Phi(k_s)>, Phi = phi (x) phi)
        w_ts = <local_q_t, local_k_s>^degree   instead when s, t share a block and local features are given
        o_t = sum_s w_ts v_s / (1 + sum_s w_ts)

    computed by the block algorithm: exact in-block weights plus the state S = sum Phi(k) v^T,
    z = sum Phi(k) of the earlier blocks.

    Args:
      phi_q, phi_k: `[batch, seq, heads, r]` sketched query and key features (any float dtype).
      v: `[batch, seq, heads, dv]`.
      local_q, local_k: `[batch, seq, heads, dl]` features of exact local attention inside blocks
        (PolySketchFormer's "mixed" form), or both None: every pair is sketched.
      degree: the local weights' even power p (used only with local features).
      block_size: tokens per block, counted from the call's first token. With local features it is
        part of the function (which pairs are exact); without, a tiling choice.
      initial_state: (S `[batch, heads, r^2, dv]`, z `[batch, heads, r^2]`), the sketched keys of
        earlier tokens (a continuation); zeros when None. It belongs to the call's first document.
      output_final_state: also return (S, z) after the last token: every key of the last document,
        the open block's included (a continuation with local features starts on the block grid).
      segment_ids: `[batch, seq]` integer ids of packed documents, or None: where a token's id
        differs from the previous token's, a document starts from the empty state.
      backend: "auto" (the first of `IMPLEMENTATIONS.auto` available: "pallas" on GPU/TPU, else
        "xla"), "reference" (dense, O(seq^2)), "xla", "pallas", or a list tried in order.

    Returns `(o, final_state)`: `o: [batch, seq, heads, dv]` in v's dtype; (S, z) fp32 or None.
    """
    phi_q, phi_k, v = _float("phi_q", phi_q), _float("phi_k", phi_k), _float("v", v)
    if phi_q.ndim != 4 or phi_k.shape != phi_q.shape:
        raise ValueError(f"phi_q and phi_k must both have shape {FEATURES}; got {phi_q.shape} and {phi_k.shape}")
    b, t, h, r = phi_q.shape
    if t < 1:
        raise ValueError(f"phi_q, phi_k, v must hold at least one token (seq >= 1); got seq = {t}")
    if v.ndim != 4 or v.shape[:3] != (b, t, h):
        raise ValueError(f"v must have shape [batch, seq, heads, dv] with [batch, seq, heads] = {(b, t, h)}; "
                         f"got {v.shape}")
    if (local_q is None) != (local_k is None):
        raise ValueError("pass local_q and local_k together (exact local attention) or neither")
    if local_q is not None:
        local_q, local_k = _float("local_q", local_q), _float("local_k", local_k)
        if local_q.ndim != 4 or local_q.shape[:3] != (b, t, h) or local_k.shape != local_q.shape:
            raise ValueError(f"local_q and local_k must both have shape [batch, seq, heads, dl] with [batch, seq, "
                             f"heads] = {(b, t, h)}; got {local_q.shape} and {local_k.shape}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2 or degree % 2:
        raise ValueError(f"degree must be an even int >= 2 (odd powers give negative weights); got {degree!r}")
    block_size = check_chunk_size(block_size)
    dv = v.shape[-1]
    if initial_state is None:
        state, norm = jnp.zeros((b, h, r * r, dv), jnp.float32), jnp.zeros((b, h, r * r), jnp.float32)
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise ValueError("initial_state must be a pair (S [batch, heads, r^2, dv], z [batch, heads, r^2])")
        state = check_shape("initial_state[0] (S)", initial_state[0], (b, h, r * r, dv), "[batch, heads, r^2, dv]")
        norm = check_shape("initial_state[1] (z)", initial_state[1], (b, h, r * r), "[batch, heads, r^2]")
    starts = document_starts(segment_ids, b, t, h)
    impl = IMPLEMENTATIONS.select(backend, signature=(r, dv, None if local_q is None else local_q.shape[-1], degree,
                                                      block_size))
    o, final = impl.run(phi_q, phi_k, v, local_q, local_k, degree, block_size, state, norm, starts)
    return o, (final if output_final_state else None)

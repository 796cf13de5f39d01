"""`gated_delta_rule`: the gated delta rule of Gated DeltaNet (Yang et al. 2024), FLA conventions."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kernels.common import (
    ACCELERATORS,
    GATE_LAYOUT,
    Implementation,
    Implementations,
    as_fp32,
    check_chunk_size,
    check_shape,
    default_scale,
    document_starts,
    state_or_zeros,
    validate_qkv,
)
from kernels.gated_delta_rule.chunked import chunk_gated_delta_rule
from kernels.gated_delta_rule.pallas import pallas_gated_delta_rule
from kernels.gated_delta_rule.pallas import probe as _pallas_probe
from kernels.gated_delta_rule.reference import recurrent_gated_delta_rule

__all__ = ["IMPLEMENTATIONS", "chunk_gated_delta_rule", "gated_delta_rule", "recurrent_gated_delta_rule"]


def _reference(q, k, v, beta, g, s0, scale, chunk_size, starts):
    del chunk_size  # token by token
    o, s = recurrent_gated_delta_rule(*as_fp32(q, k, v), beta, g, s0, scale, starts)
    return o.astype(jnp.asarray(v).dtype), s


def _xla(q, k, v, beta, g, s0, scale, chunk_size, starts):
    o, s = chunk_gated_delta_rule(*as_fp32(q, k, v), beta, g, s0, scale, chunk_size, starts)
    return o.astype(jnp.asarray(v).dtype), s


def _pallas(q, k, v, beta, g, s0, scale, chunk_size, starts):
    o, s = pallas_gated_delta_rule(q, k, v, beta, g, s0, scale, chunk_size, starts)
    return o.astype(jnp.asarray(v).dtype), s


# run(q, k, v, beta, g, initial_state, scale, chunk_size, starts) -> (o in v's dtype, final state fp32)
IMPLEMENTATIONS = Implementations("gated_delta_rule", [
    Implementation("reference", _reference, doc="token-by-token lax.scan (the oracle)"),
    Implementation("xla", _xla, doc="exact chunk-parallel UT form in pure JAX, fp32"),
    Implementation("pallas", _pallas, doc="the UT form as Pallas forward and backward kernels (interpreted on CPU)",
                   auto_platforms=ACCELERATORS, probe=_pallas_probe),
], auto=("pallas", "xla"))


def gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, g: jax.Array,
                     scale: float | None = None, initial_state: jax.Array | None = None,
                     output_final_state: bool = False, chunk_size: int = 64,
                     backend: str | Sequence[str] = "auto", segment_ids: jax.Array | None = None,
                     ) -> tuple[jax.Array, jax.Array | None]:
    """Gated delta rule (Gated DeltaNet, Yang et al. 2024; S here is dk x dv, the transpose of the
    paper's), read after write:

        S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = scale * q_t^T S_t

    i.e. per token: S <- exp(g_t) S, then S <- S + beta_t k_t (v_t - S^T k_t)^T (the delta step
    acts on the decayed state).

    Args:
      q, k: `[batch, seq, heads, dk]` (the models pass L2-normalised keys; not enforced).
      v: `[batch, seq, heads, dv]`.
      beta: `[batch, seq, heads]` write strength, typically in [0, 1] (not enforced).
      g: `[batch, seq, heads]` log decay, alpha_t = exp(g_t), typically <= 0.
      scale: query scale; default `dk ** -0.5`.
      initial_state: `[batch, heads, dk, dv]` S_0; zeros when None.
      output_final_state: return S_T as well.
      chunk_size: chunk length of the "xla" backend (a tiling choice: the result is exact for any
        size; a ragged tail is handled without padding). Validated for every backend.
      backend: "auto" (the first of `IMPLEMENTATIONS.auto` available on the platform: "xla" today),
        a name in `IMPLEMENTATIONS` ("reference": token-by-token `lax.scan`, the oracle; "xla": the
        exact chunk-parallel UT form), or a list of names tried in order (the first available runs).
      segment_ids: `[batch, seq]` integer ids of packed documents, or None. Where a token's id
        differs from the previous token's, S_{t-1} is replaced by `initial_state` (documents start
        anywhere, also inside a chunk); the final state is the last document's.

    bf16 inputs are accepted; states, gates and accumulations are fp32.
    Returns `(o, final_state)`: `o: [batch, seq, heads, dv]` in v's dtype, `final_state:
    [batch, heads, dk, dv]` fp32 (None unless `output_final_state`).
    """
    b, t, h, dk, dv = validate_qkv(q, k, v)
    beta = check_shape("beta", beta, (b, t, h), GATE_LAYOUT)
    g = check_shape("g", g, (b, t, h), GATE_LAYOUT)
    chunk_size = check_chunk_size(chunk_size)
    s0 = state_or_zeros("initial_state", initial_state, (b, h, dk, dv))
    starts = document_starts(segment_ids, b, t, h)
    impl = IMPLEMENTATIONS.select(backend, signature=(dk, dv, chunk_size))
    o, s = impl.run(q, k, v, beta, g, s0, default_scale(scale, dk), chunk_size, starts)
    return o, (s if output_final_state else None)

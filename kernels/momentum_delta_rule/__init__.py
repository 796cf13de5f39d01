"""`momentum_delta_rule`: Titans' neural long-term memory with a linear (matrix) memory, exact
per-token semantics, FLA conventions."""

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
    momentum_inputs,
    state_or_zeros,
    validate_qkv,
)
from kernels.momentum_delta_rule.chunked import chunk_momentum_delta_rule
from kernels.momentum_delta_rule.pallas import pallas_momentum_delta_rule
from kernels.momentum_delta_rule.pallas import probe as _pallas_probe
from kernels.momentum_delta_rule.reference import recurrent_momentum_delta_rule

__all__ = ["IMPLEMENTATIONS", "chunk_momentum_delta_rule", "momentum_delta_rule", "recurrent_momentum_delta_rule"]


def _reference(q, k, v, lr, log_retention, log_momentum, w0, s0, scale, chunk_size, starts):
    del chunk_size  # token by token
    o, w, s = recurrent_momentum_delta_rule(*as_fp32(q, k, v), lr, log_retention, log_momentum, w0, s0, scale, starts)
    return o.astype(jnp.asarray(v).dtype), w, s


def _xla(q, k, v, lr, log_retention, log_momentum, w0, s0, scale, chunk_size, starts):
    o, w, s = chunk_momentum_delta_rule(*as_fp32(q, k, v), lr, log_retention, log_momentum, w0, s0, scale,
                                        chunk_size, starts)
    return o.astype(jnp.asarray(v).dtype), w, s


def _pallas(q, k, v, lr, log_retention, log_momentum, w0, s0, scale, chunk_size, starts):
    o, w, s = pallas_momentum_delta_rule(q, k, v, lr, log_retention, log_momentum, w0, s0, scale, chunk_size, starts)
    return o.astype(jnp.asarray(v).dtype), w, s


# run(q, k, v, lr, log_retention, log_momentum, initial_state, initial_momentum, scale, chunk_size, starts)
#   -> (o in v's dtype, final W fp32, final S fp32 or None)
IMPLEMENTATIONS = Implementations("momentum_delta_rule", [
    Implementation("reference", _reference, doc="token-by-token lax.scan (the oracle)"),
    Implementation("xla", _xla, doc="exact chunk-parallel UT form in pure JAX, fp32"),
    Implementation("pallas", _pallas, doc="the UT form as Pallas forward and backward kernels (interpreted on CPU)",
                   auto_platforms=ACCELERATORS, probe=_pallas_probe),
], auto=("pallas", "xla"))


def momentum_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, lr: jax.Array, log_retention: jax.Array,
                        log_momentum: jax.Array | None = None, scale: float | None = None,
                        initial_state: jax.Array | None = None, initial_momentum: jax.Array | None = None,
                        output_final_state: bool = False, chunk_size: int = 64, backend: str | Sequence[str] = "auto",
                        segment_ids: jax.Array | None = None,
                        ) -> tuple[jax.Array, tuple[jax.Array, jax.Array | None] | None]:
    """Titans' neural memory (Titans Eq. 10-15) with M(z) = z W, W in R^{dk x dv}, read after write:

        e_t = k_t^T W_{t-1} - v_t,   u_t = k_t e_t^T   (gradient of 1/2 ||k_t^T W - v_t||^2 at W_{t-1})
        S_t = mu_t S_{t-1} - lr_t u_t                  (momentary + past surprise, Eq. 10/14)
        W_t = lambda_t W_{t-1} + S_t                   (forgetting, Eq. 13, lambda = 1 - alpha_Titans)
        o_t = scale * q_t^T W_t                        (retrieval, Eq. 15)

    The semantics are exact for every chunk size: the gradient is taken at W_{t-1}, not at a chunk
    anchor. With no momentum this is NOT the gated delta rule (Titans App. C): the gradient is taken
    at the undecayed W_{t-1}, W_t = (lambda_t I - lr_t k_t k_t^T) W_{t-1} + lr_t k_t v_t^T.

    Args:
      q, k: `[batch, seq, heads, dk]` (the models pass L2-normalised keys; not enforced).
      v: `[batch, seq, heads, dv]`.
      lr: `[batch, seq, heads]` inner learning rate (theta in Titans; >= 0, linear, not a log).
        The caller folds the factor 2 of the squared loss into it.
      log_retention: `[batch, seq, heads]` log lambda_t <= 0 (lambda = fraction of W kept).
      log_momentum: `[batch, seq, heads]` log mu_t <= 0 (eta in Titans), or None for NO momentum:
        then W_t = lambda_t W_{t-1} - lr_t u_t and no momentum is carried (a flag, not mu = 0
        clamped); `initial_momentum` must then be None and the returned momentum is None.
      scale: query scale; default `dk ** -0.5`.
      initial_state: `[batch, heads, dk, dv]` W_0; zeros when None.
      initial_momentum: `[batch, heads, dk, dv]` S_0; zeros when None (momentum only).
      output_final_state: return (W_T, S_T) as well.
      chunk_size: chunk length of the "xla" backend (a tiling choice: the result is exact for any
        size; a ragged tail is handled without padding). Validated for every backend.
      backend: "auto" (the first of `IMPLEMENTATIONS.auto` available on the platform: "xla" today),
        a name in `IMPLEMENTATIONS` ("reference": token-by-token `lax.scan`, the oracle; "xla": the
        exact chunk-parallel UT form), or a list of names tried in order (the first available runs).
      segment_ids: `[batch, seq]` integer ids of packed documents, or None. Where a token's id
        differs from the previous token's, (W_{t-1}, S_{t-1}) are replaced by the initial states
        (documents start anywhere, also inside a chunk); the final states are the last document's.

    bf16 inputs are accepted; states, gates and accumulations are fp32.
    Returns `(o, (final_state, final_momentum))`: `o: [batch, seq, heads, dv]` in v's dtype,
    `final_state` W_T and `final_momentum` S_T `[batch, heads, dk, dv]` fp32 (`final_momentum` is
    None without momentum); the pair is None unless `output_final_state`.
    """
    b, t, h, dk, dv = validate_qkv(q, k, v)
    lr = check_shape("lr", lr, (b, t, h), GATE_LAYOUT)
    log_retention = check_shape("log_retention", log_retention, (b, t, h), GATE_LAYOUT)
    chunk_size = check_chunk_size(chunk_size)
    w0 = state_or_zeros("initial_state", initial_state, (b, h, dk, dv))
    log_momentum, s0 = momentum_inputs(log_momentum, initial_momentum, (b, t, h),
                                       lambda s0: state_or_zeros("initial_momentum", s0, (b, h, dk, dv)))
    starts = document_starts(segment_ids, b, t, h)
    impl = IMPLEMENTATIONS.select(backend, signature=(dk, dv, chunk_size, log_momentum is not None))
    o, w, s = impl.run(q, k, v, lr, log_retention, log_momentum, w0, s0, default_scale(scale, dk), chunk_size, starts)
    return o, ((w, s) if output_final_state else None)

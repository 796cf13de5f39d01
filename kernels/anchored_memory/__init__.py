"""`anchored_memory`: Titans' deep neural memory (an MLP of fast weights, l2 objective, momentum,
scalar forgetting) with anchored chunk semantics, FLA conventions."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels.anchored_memory.chunked import ACTIVATIONS, chunk_anchored_memory
from kernels.anchored_memory.pallas import pallas_anchored_memory
from kernels.anchored_memory.pallas import probe as _pallas_probe
from kernels.anchored_memory.reference import recurrent_anchored_memory
from kernels.common import (
    ACCELERATORS,
    GATE_LAYOUT,
    Implementation,
    Implementations,
    check_chunk_size,
    check_segment_ids,
    check_shape,
    momentum_inputs,
    validate_qkv,
)

__all__ = ["ACTIVATIONS", "IMPLEMENTATIONS", "anchored_memory", "chunk_anchored_memory", "recurrent_anchored_memory"]


def _reference(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation, residual, max_grad_norm,
               segment_ids):
    o, w, s = recurrent_anchored_memory(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation,
                                        residual, max_grad_norm, segment_ids)
    return o.astype(jnp.asarray(v).dtype), w, s


def _xla(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation, residual, max_grad_norm,
         segment_ids):
    _check_documents_on_grid(segment_ids, chunk_size)
    o, w, s = chunk_anchored_memory(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation,
                                    residual, max_grad_norm, segment_ids)
    return o.astype(jnp.asarray(v).dtype), w, s


def _pallas(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation, residual, max_grad_norm,
            segment_ids):
    _check_documents_on_grid(segment_ids, chunk_size, "pallas")
    o, w, s = pallas_anchored_memory(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation,
                                     residual, max_grad_norm, segment_ids)
    return o.astype(jnp.asarray(v).dtype), w, s


# run(q, k, v, lr, log_retention, log_momentum, initial_weights, initial_momentum, chunk_size, activation,
#     residual, max_grad_norm, segment_ids) -> (o in v's dtype, final weights fp32, final momentum fp32 or None)
IMPLEMENTATIONS = Implementations("anchored_memory", [
    Implementation("reference", _reference, doc="token-by-token lax.scan with gradients at the chunk anchor (oracle)"),
    Implementation("xla", _xla, doc="the chunk-parallel dual form in pure JAX, fp32 inside each chunk"),
    Implementation("pallas", _pallas, doc="the dual form as Pallas forward and backward kernels (interpreted on CPU)",
                   auto_platforms=ACCELERATORS, probe=_pallas_probe),
], auto=("pallas", "xla"))


def _check_documents_on_grid(segment_ids, chunk_size: int, backend: str = "xla") -> None:
    """The dual form restarts documents at chunk boundaries only; checked when the ids are concrete."""
    if segment_ids is None:
        return
    try:
        seg = np.asarray(segment_ids)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):  # traced: not checkable
        return
    starts = np.argwhere((seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] > 0))
    off = [(int(b), int(t) + 1) for b, t in starts if (t + 1) % chunk_size]
    if off:
        raise ValueError(f"anchored_memory's {backend!r} backend needs every document to start on the chunk grid (a "
                         f"multiple of chunk_size={chunk_size}); documents start at (row, token) {off[:4]}. Pad "
                         "documents to multiples of the chunk size (segment id 0 = padding) or use backend='reference'")


def _check_weights(name: str, weights, batch: int, heads: int, dk: int, dv: int) -> tuple[jax.Array, ...]:
    if not isinstance(weights, (tuple, list)) or not weights:
        raise ValueError(f"{name} must be a non-empty tuple of per-layer [batch, heads, d_in, d_out] arrays")
    shapes = [tuple(jnp.shape(w)) for w in weights]
    dims = [dk] + [s[-1] for s in shapes]
    want = [(batch, heads, d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)]
    if shapes != want or dims[-1] != dv:
        raise ValueError(f"{name} must chain [batch, heads, d_in, d_out] layers from dk={dk} to dv={dv} with "
                         f"[batch, heads] = {(batch, heads)}; got shapes {shapes}")
    return tuple(check_shape(f"{name}[{i}]", w, s, "[batch, heads, d_in, d_out]")
                 for i, (w, s) in enumerate(zip(weights, want, strict=True)))


def anchored_memory(q: jax.Array, k: jax.Array, v: jax.Array, lr: jax.Array, log_retention: jax.Array,
                    log_momentum: jax.Array | None = None, *, initial_weights: Sequence[jax.Array],
                    initial_momentum: Sequence[jax.Array] | None = None, chunk_size: int = 16,
                    activation: str = "gelu", residual: bool = False, max_grad_norm: float = 0.0,
                    output_final_state: bool = False,
                    segment_ids: jax.Array | None = None, backend: str | Sequence[str] = "auto",
                    ) -> tuple[jax.Array, tuple | None]:
    """Titans' neural long-term memory with a deep memory M (Titans Eq. 12-18), read after write:

        u_t = grad_W ||M(k_t; W) - v_t||^2 at W = W_a, the weights at the start of t's chunk
        lr_t <- lr_t min(1, tau / ||u_t||)              (tau = max_grad_norm > 0: a clipped step)
        S_t = mu_t S_{t-1} - lr_t u_t                   (momentum, Eq. 13-14; none: W_t = l_t W_{t-1} - lr_t u_t)
        W_t = l_t W_{t-1} + S_t                         (forgetting, l = 1 - alpha_Titans)
        o_t = M(q_t; W_t)                               (retrieval, Eq. 15)

    M is a stack of layers z W^1, act, W^2, ... (no activation after the last), plus z when
    `residual`. `chunk_size` is part of the function (the anchors sit every `chunk_size` tokens from
    each document's start), not a tiling choice as in the delta-rule ops.

    Args:
      q, k: `[batch, seq, heads, dk]`; v: `[batch, seq, heads, dv]` (any float dtype; fp32 inside).
      lr: `[batch, seq, heads]` inner learning rate rho_t >= 0 (the gradient keeps Eq. 12's factor 2).
      log_retention: `[batch, seq, heads]` log l_t <= 0 (zeros: no forgetting).
      log_momentum: `[batch, seq, heads]` log mu_t, or None for plain gradient descent (then no
        momentum is carried and `initial_momentum` must be None).
      initial_weights: per-layer W_0, a tuple of `[batch, heads, d_in, d_out]` from dk to dv.
      initial_momentum: per-layer S_0 (same shapes), zeros when None.
      chunk_size: C, the anchor spacing. activation: "gelu" (exact) or "silu" between layers.
      max_grad_norm: tau > 0 clips every token's inner gradient to Frobenius norm tau (over all
        layers); 0 = off.
      output_final_state: also return (W_T, S_T).
      segment_ids: `[batch, seq]` integer document ids or None: where the id changes to a non-zero
        id, (W, S) restart from the initial states and the chunk grid from that token; id 0 marks
        padding, which never writes (the state is held). The "xla" and "pallas" backends need documents to start
        on multiples of C (checked when the ids are concrete).
      backend: "auto" (the first of `IMPLEMENTATIONS.auto` available: "xla"), "reference" (the
        token-by-token oracle), "xla" (the chunk-parallel dual form), or a list tried in order.

    Returns `(o, (final_weights, final_momentum))`: `o: [batch, seq, heads, dv]` in v's dtype; the
    final states fp32 (`final_momentum` None without momentum); the pair is None unless
    `output_final_state`. The final states are the last token's (held through trailing padding).
    """
    b, t, h, dk, dv = validate_qkv(q, k, v)
    lr = check_shape("lr", lr, (b, t, h), GATE_LAYOUT)
    log_retention = check_shape("log_retention", log_retention, (b, t, h), GATE_LAYOUT)
    chunk_size = check_chunk_size(chunk_size)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    if not max_grad_norm >= 0:
        raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping); got {max_grad_norm}")
    if residual and dk != dv:
        raise ValueError(f"a residual memory needs dk == dv, got dk={dk}, dv={dv}")
    w0 = _check_weights("initial_weights", initial_weights, b, h, dk, dv)
    log_momentum, s0 = momentum_inputs(log_momentum, initial_momentum, (b, t, h), lambda s0: (
        tuple(jnp.zeros_like(w) for w in w0) if s0 is None else _check_weights("initial_momentum", s0, b, h, dk, dv)))
    segment_ids = check_segment_ids(segment_ids, b, t)
    impl = IMPLEMENTATIONS.select(backend, signature=(tuple(w.shape[2:] for w in w0), chunk_size, activation, residual,
                                                log_momentum is not None))
    o, w, s = impl.run(q, k, v, lr, log_retention, log_momentum, w0, s0, chunk_size, activation, residual,
                       float(max_grad_norm), segment_ids)
    return o, ((w, s) if output_final_state else None)

"""The anchored deep memory's Pallas backend: `chunk_step` (the chunk-parallel dual form of
`chunked.py`: the l2 gradients at the chunk's anchor, the learner's terms, the dual read) as the
chunk step of the shared Pallas driver (`kernels.pallas_chunks`), forward and backward kernels over
one (batch, head) per program, the per-layer (W, S) carried in fp32. The backward kernel pulls the
cotangents through `chunk_step`'s own VJP, inner gradients included (second order)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.anchored_memory.chunked import ACTIVATIONS, chunk_grid, chunk_step
from kernels.common import entry
from kernels.pallas_chunks import compile_probe, pallas_chunk_scan, probe_length


def _step(activation: str, residual: bool, max_grad_norm: float, momentum: bool, carry, fresh, chunk, aux, end):
    """One chunk of one (batch, head): carry / fresh (W layers, S layers) or (W layers,) with
    `[d_in, d_out]` leaves; chunk (q, k, v, lr, log_retention[, log_momentum]) `[C, ...]`;
    aux (valid, reset) `[C]` flags (a document starts at the chunk's first token when reset[0]).
    `end` is unused: the op pads to whole chunks itself, with invalid positions (exact no-ops)."""
    del end
    valid, reset = aux
    w, *s = jax.tree.map(lambda f, c: jnp.where(entry(reset, 0) > 0.5, f, c), fresh, carry)
    q, k, v, lr, log_ret, *log_mom = chunk
    (w, s), y = chunk_step(w, s[0] if momentum else tuple(jnp.zeros_like(x) for x in w), q, k, v, lr, log_ret,
                           log_mom[0] if momentum else None, valid > 0.5, activation=ACTIVATIONS[activation],
                           residual=residual, max_grad_norm=max_grad_norm)
    return ((w, s) if momentum else (w,)), y


def pallas_anchored_memory(q, k, v, lr, log_retention, log_momentum, initial_weights, initial_momentum,
                           chunk_size: int, activation: str, residual: bool, max_grad_norm: float,
                           segment_ids, interpret: bool | None = None):
    """Same contract as `chunk_anchored_memory`; returns (o `[B, T, H, dv]` fp32, W_T, S_T or None)."""
    b, t, h = q.shape[:3]
    valid, resets = chunk_grid(segment_ids, b, t, h, chunk_size)
    padded = valid.shape[1]
    resets = jnp.broadcast_to(resets[:, :, None], valid.shape)
    momentum = log_momentum is not None
    inputs = (q, k, v, lr, log_retention) + ((log_momentum,) if momentum else ())
    inputs = tuple(jnp.pad(x, [(0, 0), (0, padded - t)] + [(0, 0)] * (x.ndim - 2)) for x in inputs)
    states = (tuple(initial_weights), tuple(initial_momentum)) if momentum else (tuple(initial_weights),)
    step = functools.partial(_step, activation, residual, max_grad_norm, momentum)
    final, o = pallas_chunk_scan(step, states, states, inputs, (valid, resets), chunk_size, interpret)
    return o[:, :t], final[0], (final[1] if momentum else None)


def probe(layers: tuple[tuple[int, int], ...], chunk_size: int, activation: str, residual: bool,
          momentum: bool) -> None:
    """Compiles a forward + backward at these layer shapes, chunk size and variant (batch 1,
    head 1, two chunks and a ragged tail, a document starting on the second chunk, clipping on) on
    the default device."""
    t = probe_length(chunk_size)
    dk, dv = layers[0][0], layers[-1][1]
    q, v, gate = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, t, 1, dk), (1, t, 1, dv), (1, t, 1)))
    states = tuple(jax.ShapeDtypeStruct((1, 1) + shape, jnp.float32) for shape in layers)

    def loss(q, k, v, lr, log_ret, log_mom, weights):
        segment_ids = jnp.ones((1, t), jnp.int32).at[:, chunk_size:].set(2)
        o, w, s = pallas_anchored_memory(q, k, v, lr, log_ret, log_mom if momentum else None, weights,
                                         weights if momentum else None, chunk_size, activation, residual, 1.0,
                                         segment_ids)
        return o.sum() + sum(x.sum() for x in w + (s if momentum else ()))

    compile_probe(loss, q, q, v, gate, gate, gate, states)

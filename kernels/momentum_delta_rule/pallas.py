"""The momentum delta rule's Pallas backend: `momentum_delta_chunk` (the exact UT form of
`chunked.py`) as the chunk step of the shared Pallas driver (`kernels.pallas_chunks`), forward and
backward kernels over one (batch, head) per program, (W, S) carried in fp32, the triangular solve
by masked-row substitution."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.common import solve_by_masked_rows, substitute_rows
from kernels.momentum_delta_rule.chunked import momentum_delta_chunk
from kernels.pallas_chunks import compile_probe, pallas_chunk_scan, probe_length, probe_starts, value_split


def _step(scale: float, momentum: bool, resets: bool, solve, carry, fresh, chunk, aux, end):
    """One chunk of one (batch, head): carry / fresh (W, S) or (W,) `[dk, dv]`; chunk (q, k, v, lr,
    log_retention[, log_momentum]) `[C, ...]`; aux (document-start flags `[C]`,) when `resets`."""
    q, k, v, lr, log_ret, *log_mom = (x.astype(jnp.float32) for x in chunk)
    starts = aux[0] > 0.5 if resets else None
    pad = (lambda states: states) if momentum else (lambda states: (states[0], None))  # noqa: E731
    (w, s), o = momentum_delta_chunk(pad(carry), pad(fresh),
                                     (q, k, v, lr, log_ret, log_mom[0] if momentum else None, starts), scale,
                                     solve=solve, end=end)
    return ((w, s) if momentum else (w,)), o


def pallas_momentum_delta_rule(q, k, v, lr, log_retention, log_momentum, initial_state, initial_momentum,
                               scale: float, chunk_size: int, starts=None, interpret: bool | None = None,
                               value_block: int | None = None):
    """Same contract as `chunk_momentum_delta_rule` (q, k, v in any float dtype); returns
    (o fp32, W_T, S_T or None). `value_block`: value columns per program
    (`kernels.pallas_chunks.value_split`)."""
    momentum = log_momentum is not None

    def step(solve):  # the forward kernel's step solves by plain substitution, the backward's with its VJP
        return functools.partial(_step, float(scale), momentum, starts is not None, solve)

    states = (initial_state, initial_momentum) if momentum else (initial_state,)
    gates = (lr, log_retention) + ((log_momentum,) if momentum else ())
    final, o = pallas_chunk_scan(step(substitute_rows), states, states, (q, k, v) + gates,
                                 () if starts is None else (starts,), chunk_size, interpret,
                                 grad_step=step(solve_by_masked_rows),
                                 split=value_split(v.shape[-1], (False, False, True) + (False,) * len(gates), value_block))
    return o, final[0], (final[1] if momentum else None)


def probe(dk: int, dv: int, chunk_size: int, momentum: bool) -> None:
    """Compiles a forward + backward at these head dims, chunk size and variant (batch 1, head 1,
    two chunks and a ragged tail, an in-chunk document start) on the default device."""
    t = probe_length(chunk_size)
    q, v, gate, state = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, t, 1, dk), (1, t, 1, dv), (1, t, 1),
                                                                        (1, 1, dk, dv)))

    def loss(q, k, v, lr, log_ret, log_mom, w0, s0):
        o, w, s = pallas_momentum_delta_rule(q, k, v, lr, log_ret, log_mom if momentum else None, w0,
                                             s0 if momentum else None, dk**-0.5, chunk_size, probe_starts(t))
        return o.sum() + w.sum() + (s.sum() if momentum else 0.0)

    compile_probe(loss, q, q, v, gate, gate, gate, state, state)

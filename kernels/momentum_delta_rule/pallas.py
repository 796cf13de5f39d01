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
from kernels.pallas_chunks import PROBE_SHAPE, PROBE_STARTS, compile_probe, pallas_chunk_scan


def _step(scale: float, momentum: bool, resets: bool, solve, carry, fresh, chunk, aux):
    """One chunk of one (batch, head): carry / fresh (W, S) or (W,) `[dk, dv]`; chunk (q, k, v, lr,
    log_retention[, log_momentum]) `[C, ...]`; aux (document-start flags `[C]`,) when `resets`."""
    q, k, v, lr, log_ret, *log_mom = (x.astype(jnp.float32) for x in chunk)
    starts = aux[0] > 0.5 if resets else None
    pad = (lambda states: states) if momentum else (lambda states: (states[0], None))  # noqa: E731
    (w, s), o = momentum_delta_chunk(pad(carry), pad(fresh),
                                     (q, k, v, lr, log_ret, log_mom[0] if momentum else None, starts), scale,
                                     solve=solve)
    return ((w, s) if momentum else (w,)), o


def pallas_momentum_delta_rule(q, k, v, lr, log_retention, log_momentum, initial_state, initial_momentum,
                               scale: float, chunk_size: int, starts=None, interpret: bool | None = None):
    """Same contract as `chunk_momentum_delta_rule` (q, k, v in any float dtype); returns
    (o fp32, W_T, S_T or None)."""
    momentum = log_momentum is not None
    step = functools.partial(functools.partial, _step, float(scale), momentum, starts is not None)
    states = (initial_state, initial_momentum) if momentum else (initial_state,)
    gates = (lr, log_retention) + ((log_momentum,) if momentum else ())
    final, o = pallas_chunk_scan(step(substitute_rows), states, states, (q, k, v) + gates,
                                 () if starts is None else (starts,), chunk_size, interpret,
                                 grad_step=step(solve_by_masked_rows))
    return o, final[0], (final[1] if momentum else None)


def probe() -> None:
    """Compiles a tiny forward + backward (momentum, an in-chunk document start) on the default device."""
    b, t, h, d = PROBE_SHAPE
    x, gate, state = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((b, t, h, d), (b, t, h), (b, h, d, d)))

    def loss(q, k, v, lr, log_ret, log_mom, w0, s0):
        o, w, s = pallas_momentum_delta_rule(q, k, v, lr, log_ret, log_mom, w0, s0, d**-0.5, 16, PROBE_STARTS)
        return o.sum() + w.sum() + s.sum()

    compile_probe(loss, x, x, x, gate, gate, gate, state, state)

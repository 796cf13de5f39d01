"""The gated delta rule's Pallas backend: `gated_delta_chunk` (the exact UT form of `chunked.py`)
as the chunk step of the shared Pallas driver (`kernels.pallas_chunks`), forward and backward
kernels over one (batch, head) per program, the state carried in fp32, the triangular solve by
masked-row substitution (no dynamic indexing, no XLA solver inside a kernel)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.common import solve_by_masked_rows, substitute_rows
from kernels.gated_delta_rule.chunked import gated_delta_chunk
from kernels.pallas_chunks import PROBE_SHAPE, PROBE_STARTS, compile_probe, pallas_chunk_scan


def _step(scale: float, resets: bool, solve, s, s0, chunk, aux):
    """One chunk of one (batch, head): `s, s0: [dk, dv]`, chunk (q, k, v, beta, g) `[C, ...]`,
    aux (document-start flags `[C]`,) when `resets`."""
    q, k, v, beta, g = (x.astype(jnp.float32) for x in chunk)
    starts = aux[0] > 0.5 if resets else None
    return gated_delta_chunk(s, s0, (q, k, v, beta, g, starts), scale, solve=solve)


def pallas_gated_delta_rule(q, k, v, beta, g, initial_state, scale: float, chunk_size: int, starts=None,
                            interpret: bool | None = None):
    """Same contract as `chunk_gated_delta_rule` (q, k, v in any float dtype); returns (o fp32, S_T)."""
    step = functools.partial(functools.partial, _step, float(scale), starts is not None)
    aux = () if starts is None else (starts,)
    final, o = pallas_chunk_scan(step(substitute_rows), initial_state, initial_state, (q, k, v, beta, g), aux,
                                 chunk_size, interpret, grad_step=step(solve_by_masked_rows))
    return o, final


def probe() -> None:
    """Compiles a tiny forward + backward with an in-chunk document start on the default device."""
    b, t, h, d = PROBE_SHAPE
    x, gate, state = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((b, t, h, d), (b, t, h), (b, h, d, d)))

    def loss(q, k, v, beta, g, s0):
        o, s = pallas_gated_delta_rule(q, k, v, beta, g, s0, d**-0.5, 16, PROBE_STARTS)
        return o.sum() + s.sum()

    compile_probe(loss, x, x, x, gate, gate, state)

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
from kernels.pallas_chunks import compile_probe, pallas_chunk_scan, probe_length, probe_starts, value_split


def _step(scale: float, resets: bool, solve, s, s0, chunk, aux, end):
    """One chunk of one (batch, head): `s, s0: [dk, dv]`, chunk (q, k, v, beta, g) `[C, ...]`,
    aux (document-start flags `[C]`,) when `resets`."""
    q, k, v, beta, g = (x.astype(jnp.float32) for x in chunk)
    starts = aux[0] > 0.5 if resets else None
    return gated_delta_chunk(s, s0, (q, k, v, beta, g, starts), scale, solve=solve, end=end)


def pallas_gated_delta_rule(q, k, v, beta, g, initial_state, scale: float, chunk_size: int, starts=None,
                            interpret: bool | None = None, value_block: int | None = None):
    """Same contract as `chunk_gated_delta_rule` (q, k, v in any float dtype); returns (o fp32, S_T).
    `value_block`: value columns per program (`kernels.pallas_chunks.value_split`)."""

    def step(solve):  # the forward kernel's step solves by plain substitution, the backward's with its VJP
        return functools.partial(_step, float(scale), starts is not None, solve)

    aux = () if starts is None else (starts,)
    final, o = pallas_chunk_scan(step(substitute_rows), initial_state, initial_state, (q, k, v, beta, g), aux,
                                 chunk_size, interpret, grad_step=step(solve_by_masked_rows),
                                 split=value_split(v.shape[-1], (False, False, True, False, False), value_block))
    return o, final


def probe(dk: int, dv: int, chunk_size: int) -> None:
    """Compiles a forward + backward at these head dims and chunk size (batch 1, head 1, two chunks
    and a ragged tail, an in-chunk document start) on the default device."""
    t = probe_length(chunk_size)
    q, v, gate, state = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, t, 1, dk), (1, t, 1, dv), (1, t, 1),
                                                                        (1, 1, dk, dv)))

    def loss(q, k, v, beta, g, s0):
        o, s = pallas_gated_delta_rule(q, k, v, beta, g, s0, dk**-0.5, chunk_size, probe_starts(t))
        return o.sum() + s.sum()

    compile_probe(loss, q, q, v, gate, gate, state)

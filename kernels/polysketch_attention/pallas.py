"""PolySketch attention's Pallas backend: `polysketch_block` (the block algorithm of `chunked.py`)
as the chunk step of the shared Pallas driver (`kernels.pallas_chunks`), forward and backward
kernels over one (batch, head) per program with (S `[r^2, dv]`, z `[r^2]`) carried in fp32 and
each block's start state saved for the backward. No value split: z is shared by every value
column (a program carries the whole state)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.pallas_chunks import compile_probe, pallas_chunk_scan, probe_length, probe_starts
from kernels.polysketch_attention.chunked import polysketch_block, rows_dot_vector


def _step(degree: int, local: bool, resets: bool, carry, fresh, chunk, aux, end):
    """One block of one (batch, head): carry (S `[r^2, dv]`, z `[r^2]`); chunk (phi_q, phi_k, v[,
    local_q, local_k]) `[C, ...]`; aux (document-start flags `[C]`,) when `resets`. Zero padding
    rows are neutral (no weight, no features), so `end` is not needed."""
    del fresh, end
    phi_q, phi_k, v, *local = (x.astype(jnp.float32) for x in chunk)
    local_q, local_k = local if local else (None, None)
    starts = aux[0] > 0.5 if resets else None
    return polysketch_block(*carry, (phi_q, phi_k, v, starts, local_q, local_k), degree, rows_dot_vector)


def pallas_polysketch_attention(phi_q, phi_k, v, local_q, local_k, degree: int, block_size: int, state, norm,
                                starts=None, interpret: bool | None = None):
    """Same contract as `chunk_polysketch_attention` (inputs in any float dtype); returns
    (o fp32, (S, z))."""
    local = local_q is not None
    step = functools.partial(_step, int(degree), local, starts is not None)
    xs = (phi_q, phi_k, v) + ((local_q, local_k) if local else ())
    final, o = pallas_chunk_scan(step, (state, norm), (), xs, () if starts is None else (starts,), block_size,
                                 interpret)
    return o, final


def probe(r: int, dv: int, dl: int | None, degree: int, block_size: int) -> None:
    """Compiles a forward + backward at these sizes (sketch r, value dim, local feature dim or None,
    block; batch 1, head 1, two blocks and a ragged tail, an in-block document start) on the
    default device."""
    t = probe_length(block_size)
    phi, v = (jax.ShapeDtypeStruct((1, t, 1, d), jnp.float32) for d in (r, dv))
    local = () if dl is None else (jax.ShapeDtypeStruct((1, t, 1, dl), jnp.float32),) * 2
    state, norm = jax.ShapeDtypeStruct((1, 1, r * r, dv), jnp.float32), jax.ShapeDtypeStruct((1, 1, r * r), jnp.float32)

    def loss(phi_q, phi_k, v, state, norm, *local):
        lq, lk = local if local else (None, None)
        o, (s, z) = pallas_polysketch_attention(phi_q, phi_k, v, lq, lk, degree, block_size, state, norm,
                                                probe_starts(t))
        return o.sum() + s.sum() + z.sum()

    compile_probe(loss, phi, phi, v, state, norm, *local)

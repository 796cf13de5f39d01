"""Exact chunk-parallel gated delta rule in pure JAX (UT / WY form; the default on CPU).

Inside a chunk with start state S_a and in-chunk positions r = 1..C, let gamma_r = sum_{j<=r} g_j
(cumulative log decay) and write the delta step as S_r = exp(g_r) S_{r-1} + k_r e_r^T with the
scaled error row e_r = beta_r (v_r - k_r^T exp(g_r) S_{r-1}). Unrolling,

    S_r = exp(gamma_r) S_a + sum_{i<=r} exp(gamma_r - gamma_i) k_i e_i^T,

so the errors solve a unit-lower-triangular system, with E = [e_1; ...; e_C] (C x dv):

    (I + A) E = diag(beta) (V - diag(exp(gamma)) K S_a),
    A_{r,i} = beta_r exp(gamma_r - gamma_i) k_r^T k_i   (i < r),

and then, exactly (no approximation, any chunk size):

    o_r = scale * (exp(gamma_r) q_r^T S_a + sum_{i<=r} exp(gamma_r - gamma_i) (q_r^T k_i) e_i)
    S_C = exp(gamma_C) S_a + K^T diag(exp(gamma_C - gamma)) E.

Document starts inside a chunk (segment_ids): a token after an in-chunk start reads S_0 (the
initial state) instead of S_a, gamma restarts at its document's start, and every in-chunk decay
exp(gamma_r - gamma_i) between two documents is masked to 0, so the same solve stays exact.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kernels.common import (
    chunk_scan,
    decay_ratios,
    in_chunk_documents,
    end_entry,
    log_since_start,
    prefix_sum,
    solve_unit_lower,
    start_state_reads,
)


def gated_delta_chunk(s: jax.Array, s0: jax.Array, chunk: tuple, scale: float,
                      solve: Callable = solve_unit_lower, end: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One chunk of the UT form above for any leading axes (`[batch, heads]` in the xla backend,
    none in a Pallas program): `s, s0: [..., dk, dv]` the chunk's start state and the reset state;
    `chunk = (q, k: [..., C, dk], v: [..., C, dv], beta, g: [..., C], starts: [..., C] bool or None)`,
    fp32; `solve`: the unit-lower-triangular solver; `end` (None: C): the count of real rows, the
    rest zero padding (the state returned is the one after row `end - 1`).
    Returns (S at the chunk's end, o `[..., C, dv]`)."""
    at_end = functools.partial(end_entry, end=end)
    q_c, k_c, v_c, beta_c, g_c, start_c = chunk
    gamma = prefix_sum(g_c)
    decay = decay_ratios(gamma)                                       # [..., C, C]
    last = None
    if start_c is not None:
        last, same = in_chunk_documents(start_c)
        decay = jnp.where(same, decay, 0.0)
        gamma = log_since_start(gamma, g_c, last)                     # decay from each row's start state
    a = beta_c[..., :, None] * decay * jnp.einsum("...rk,...ik->...ri", k_c, k_c)
    k_s = start_state_reads(k_c, s, s0, last)
    e = solve(a, beta_c[..., None] * (v_c - jnp.exp(gamma)[..., None] * k_s))
    qk = decay * jnp.einsum("...rk,...ik->...ri", q_c, k_c)
    o = jnp.exp(gamma)[..., None] * start_state_reads(q_c, s, s0, last) + qk @ e
    s_start = s if last is None else jnp.where((at_end(last) >= 0)[..., None, None], s0, s)
    s = jnp.exp(at_end(gamma))[..., None, None] * s_start + jnp.einsum("...rk,...rv->...kv", k_c,
                                                                          at_end(decay, -2)[..., :, None] * e)
    return s, scale * o


def chunk_gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, g: jax.Array,
                           initial_state: jax.Array, scale: float, chunk_size: int,
                           starts: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Gated delta rule S_t = exp(g_t)(I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
    o_t = scale q_t^T S_t, computed chunk by chunk with the exact UT form above.

    Args (fp32, validated): `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`,
    `beta, g: [batch, seq, heads]`, `initial_state: [batch, heads, dk, dv]`, `chunk_size` >= 1
    (a tiling choice only: every chunk size gives the same function), `starts: [batch, seq, heads]`
    bool document starts (the state restarts from `initial_state` there) or None.
    Returns `o: [batch, seq, heads, dv]` and the final state `[batch, heads, dk, dv]`, fp32.
    """
    final_state, o = chunk_scan(lambda s, chunk: gated_delta_chunk(s, initial_state, chunk, scale), initial_state,
                                (q, k, v, beta, g, starts), chunk_size)
    return o, final_state

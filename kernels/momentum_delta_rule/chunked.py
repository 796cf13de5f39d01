"""Exact chunk-parallel form of Titans' linear-memory update (UT / WY form; the default on CPU).

Inside a chunk with start states (W_a, S_a) and in-chunk positions r = 1..C (spec §1.6, neutral
names: lambda retention, mu momentum decay, rho = lr), for ANY per-token gradient factors u_i:

    S_r = m_r S_a - sum_{i<=r} n_{i,r} u_i
    W_r = b_r W_a + f_r S_a - sum_{i<=r} G_{r,i} u_i

    b_r = prod_{j<=r} lambda_j,  m_r = prod_{j<=r} mu_j,  n_{i,r} = rho_i prod_{j=i+1..r} mu_j,
    f_r = sum_{j<=r} (b_r / b_j) m_j,  G = D N  with D_{r,j} = b_r / b_j, N_{j,i} = n_{i,j}
    (both lower triangular incl. the diagonal).

Exact per-token semantics take u_i = k_i e_i^T with e_i = k_i^T W_{i-1} - v_i (the gradient at
W_{i-1}, not at the anchor W_a), so with E = [e_1; ...; e_C] (C x dv) and b_0 = 1, f_0 = 0:

    (I + L) E = diag(b_{r-1}) K W_a + diag(f_{r-1}) K S_a - V,   L_{r,i} = G_{r-1,i} k_r^T k_i (i < r),

a unit-lower-triangular system. Then o = scale (diag(b) Q W_a + diag(f) Q S_a - (G * Q K^T) E)
(* elementwise),
W_C = b_C W_a + f_C S_a - K^T diag(G_{C,.}) E and S_C = m_C S_a - K^T diag(n_{.,C}) E.
Every ratio of products is exp of a difference of cumulative log sums, masked before the exp.
Without momentum (a flag, not mu = 0 clamped): m = f = 0, n_{i,r} = rho_i [i = r], G = D diag(rho).

Document starts inside a chunk (segment_ids): a row after an in-chunk start reads (W_0, S_0)
instead of (W_a, S_a); b, m and f restart at its document's start; D, N and G are masked to 0
between documents (G = D N stays exact: D and N are masked by the same contiguous documents); and
the coefficients of W_{r-1} at a start token are b = 1, f = 0 (the reset state itself).
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
    shift_down,
    solve_unit_lower,
    start_state_reads,
)


def momentum_delta_chunk(carry: tuple, fresh: tuple, chunk: tuple, scale: float,
                         solve: Callable = solve_unit_lower, end: jax.Array | None = None) -> tuple[tuple, jax.Array]:
    """One chunk of the UT form above for any leading axes (`[batch, heads]` in the xla backend,
    none in a Pallas program): `carry = (W_a, S_a)` the chunk's start states and `fresh = (W_0, S_0)`
    the reset states, `[..., dk, dv]` (S None without momentum); `chunk = (q, k: [..., C, dk],
    v: [..., C, dv], lr, log_retention, log_momentum (None: no momentum): [..., C],
    starts: [..., C] bool or None)`, fp32; `solve`: the unit-lower-triangular solver; `end` (None:
    C): the count of real rows, the rest zero padding (the states returned are those after row
    `end - 1`). Returns ((W, S) at the chunk's end, o `[..., C, dv]`)."""
    at_end = functools.partial(end_entry, end=end)
    (w, s), (w0, s0) = carry, fresh
    q_c, k_c, v_c, lr_c, log_ret_c, log_mom_c, start_c = chunk
    momentum = log_mom_c is not None
    last, same = (None, None) if start_c is None else in_chunk_documents(start_c)
    mask = (lambda x: x) if same is None else (lambda x: jnp.where(same, x, 0.0))  # noqa: E731
    restart = (lambda c, step: c) if last is None else (lambda c, step: log_since_start(c, step, last))  # noqa: E731
    cum_ret = prefix_sum(log_ret_c)
    d = mask(decay_ratios(cum_ret))                                   # D_{r,j} = b_r / b_j
    log_b = restart(cum_ret, log_ret_c)                               # log b_r from the row's start state
    if momentum:
        cum_mom = prefix_sum(log_mom_c)
        n = mask(decay_ratios(cum_mom)) * lr_c[..., None, :]          # N_{j,i} = n_{i,j}
        log_m = restart(cum_mom, log_mom_c)                           # log m_r
        f = jnp.sum(d * jnp.exp(log_m)[..., None, :], axis=-1)
        gm = d @ n                                                    # G_{r,i}
    else:
        gm = d * lr_c[..., None, :]
    # coefficients of W_{r-1}: b_{r-1} (1 at a start: exp of the row's own log_b minus its step)
    rhs = jnp.exp(log_b - log_ret_c)[..., None] * start_state_reads(k_c, w, w0, last) - v_c
    if momentum:
        f_prev = shift_down(f)
        if start_c is not None:
            f_prev = jnp.where(start_c, 0.0, f_prev)
        rhs = rhs + f_prev[..., None] * start_state_reads(k_c, s, s0, last)
    kk = jnp.einsum("...rk,...ik->...ri", k_c, k_c)
    e = solve(mask(shift_down(gm, rows=True)) * kk, rhs)              # [..., C, dv]

    qk = jnp.einsum("...rk,...ik->...ri", q_c, k_c)
    o = jnp.exp(log_b)[..., None] * start_state_reads(q_c, w, w0, last) - (gm * qk) @ e
    ends_fresh = None if last is None else (at_end(last) >= 0)[..., None, None]
    w_start = w if last is None else jnp.where(ends_fresh, w0, w)
    w_next = (jnp.exp(at_end(log_b))[..., None, None] * w_start
              - jnp.einsum("...rk,...rv->...kv", k_c, at_end(gm, -2)[..., :, None] * e))
    if momentum:
        s_start = s if last is None else jnp.where(ends_fresh, s0, s)
        o = o + f[..., None] * start_state_reads(q_c, s, s0, last)
        w_next = w_next + at_end(f)[..., None, None] * s_start
        s = (jnp.exp(at_end(log_m))[..., None, None] * s_start
             - jnp.einsum("...rk,...rv->...kv", k_c, at_end(n, -2)[..., :, None] * e))
    return (w_next, s), scale * o


def chunk_momentum_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, lr: jax.Array,
                              log_retention: jax.Array, log_momentum: jax.Array | None,
                              initial_state: jax.Array, initial_momentum: jax.Array | None,
                              scale: float, chunk_size: int,
                              starts: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Titans' linear memory S_t = mu_t S_{t-1} - lr_t k_t (k_t^T W_{t-1} - v_t)^T,
    W_t = lambda_t W_{t-1} + S_t, o_t = scale q_t^T W_t (no momentum: W_t = lambda_t W_{t-1} -
    lr_t k_t e_t^T), computed chunk by chunk with the exact UT form above.

    Args (fp32, validated): `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`,
    `lr, log_retention, log_momentum: [batch, seq, heads]`, `initial_state, initial_momentum:
    [batch, heads, dk, dv]` (`initial_momentum` is None iff `log_momentum` is None), `chunk_size`
    >= 1 (a tiling choice only: every chunk size gives the same function), `starts: [batch, seq,
    heads]` bool document starts (W, S restart from the initial states there) or None.
    Returns `o: [batch, seq, heads, dv]`, W_T and S_T (None without momentum), all fp32.
    """
    fresh = (initial_state, initial_momentum)
    (w, s), o = chunk_scan(lambda carry, chunk: momentum_delta_chunk(carry, fresh, chunk, scale), fresh,
                           (q, k, v, lr, log_retention, log_momentum, starts), chunk_size)
    return o, w, s

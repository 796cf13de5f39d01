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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common import chunk_scan, decay_ratios, solve_unit_lower


def _shift_down(x: jax.Array, axis: int, fill: float) -> jax.Array:
    """Position r gets position r-1's value along `axis` (r = 1 gets `fill`): the coefficients of
    W_{r-1}, which token r's error reads."""
    size = x.shape[axis]
    first = jnp.full_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis), fill)
    return jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis=axis)


def chunk_momentum_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, lr: jax.Array,
                              log_retention: jax.Array, log_momentum: jax.Array | None,
                              initial_state: jax.Array, initial_momentum: jax.Array | None,
                              scale: float, chunk_size: int) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Titans' linear memory S_t = mu_t S_{t-1} - lr_t k_t (k_t^T W_{t-1} - v_t)^T,
    W_t = lambda_t W_{t-1} + S_t, o_t = scale q_t^T W_t (no momentum: W_t = lambda_t W_{t-1} -
    lr_t k_t e_t^T), computed chunk by chunk with the exact UT form above.

    Args (fp32, validated): `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`,
    `lr, log_retention, log_momentum: [batch, seq, heads]`, `initial_state, initial_momentum:
    [batch, heads, dk, dv]` (`initial_momentum` is None iff `log_momentum` is None), `chunk_size`
    >= 1 (a tiling choice only: every chunk size gives the same function).
    Returns `o: [batch, seq, heads, dv]`, W_T and S_T (None without momentum), all fp32.
    """
    momentum = log_momentum is not None

    def body(carry, chunk):
        # w, s: [b, h, dk, dv]; q_c, k_c: [b, h, C, dk]; v_c: [b, h, C, dv]; gates: [b, h, C].
        w, s = carry
        q_c, k_c, v_c, lr_c, log_ret_c, log_mom_c = chunk
        cum_ret = jnp.cumsum(log_ret_c, axis=-1)                       # log b_r
        d = decay_ratios(cum_ret)                                     # D_{r,j} = b_r / b_j
        if momentum:
            cum_mom = jnp.cumsum(log_mom_c, axis=-1)                   # log m_r
            n = decay_ratios(cum_mom) * lr_c[..., None, :]            # N_{j,i} = n_{i,j}
            f = jnp.einsum("bhrj,bhj->bhr", d, jnp.exp(cum_mom))
            gm = d @ n                                                # G_{r,i}
        else:
            gm = d * lr_c[..., None, :]
        rhs = jnp.exp(_shift_down(cum_ret, -1, 0.0))[..., None] * jnp.einsum("bhrk,bhkv->bhrv", k_c, w) - v_c
        if momentum:
            rhs = rhs + _shift_down(f, -1, 0.0)[..., None] * jnp.einsum("bhrk,bhkv->bhrv", k_c, s)
        kk = jnp.einsum("bhrk,bhik->bhri", k_c, k_c)
        e = solve_unit_lower(_shift_down(gm, -2, 0.0) * kk, rhs)      # [b, h, C, dv]

        qk = jnp.einsum("bhrk,bhik->bhri", q_c, k_c)
        o = jnp.exp(cum_ret)[..., None] * jnp.einsum("bhrk,bhkv->bhrv", q_c, w) - (gm * qk) @ e
        w_next = (jnp.exp(cum_ret[..., -1])[..., None, None] * w
                  - jnp.einsum("bhrk,bhrv->bhkv", k_c, gm[..., -1, :, None] * e))
        if momentum:
            o = o + f[..., None] * jnp.einsum("bhrk,bhkv->bhrv", q_c, s)
            w_next = w_next + f[..., -1, None, None] * s
            s = (jnp.exp(cum_mom[..., -1])[..., None, None] * s
                 - jnp.einsum("bhrk,bhrv->bhkv", k_c, n[..., -1, :, None] * e))
        return (w_next, s), scale * o

    (w, s), o = chunk_scan(body, (initial_state, initial_momentum),
                           (q, k, v, lr, log_retention, log_momentum), chunk_size)
    return o, w, s

"""Token-by-token oracle for the gated delta rule (Yang et al. 2024, "Gated Delta Networks").

The spec in code: one `lax.scan` step per token, everything in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common import token_scan


def recurrent_gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, g: jax.Array,
                               initial_state: jax.Array, scale: float,
                               starts: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Gated delta rule, one token at a time (read after write; the transpose of GDN's S in R^{dv x dk}):

        S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        o_t = scale * q_t^T S_t

    i.e. decay first, then the delta step on the decayed state:
    S <- exp(g_t) S;  S <- S + beta_t k_t (v_t - S^T k_t)^T. At a document start (`starts`)
    S_{t-1} is replaced by the initial state first.

    Args (fp32, validated): `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`,
    `beta, g: [batch, seq, heads]` (g a log decay), `initial_state: [batch, heads, dk, dv]`,
    `starts: [batch, seq, heads]` bool or None.
    Returns `o: [batch, seq, heads, dv]` and the final state `[batch, heads, dk, dv]`, fp32.
    """

    def step(s, x):
        q_t, k_t, v_t, beta_t, g_t, start_t = x
        if start_t is not None:
            s = jnp.where(start_t[..., None, None], initial_state, s)
        s = jnp.exp(g_t)[..., None, None] * s
        err = beta_t[..., None] * (v_t - jnp.einsum("bhk,bhkv->bhv", k_t, s))
        s = s + k_t[..., :, None] * err[..., None, :]
        return s, scale * jnp.einsum("bhk,bhkv->bhv", q_t, s)

    final_state, o = token_scan(step, initial_state, (q, k, v, beta, g, starts))
    return o, final_state

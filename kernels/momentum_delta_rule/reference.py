"""Token-by-token oracle for Titans' neural memory with a linear (matrix) memory.

The spec in code: one `lax.scan` step per token, everything in fp32, exact per-token semantics
(the gradient is taken at W_{t-1}, never at a chunk anchor)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.common import token_scan


def recurrent_momentum_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, lr: jax.Array,
                                  log_retention: jax.Array, log_momentum: jax.Array | None,
                                  initial_state: jax.Array, initial_momentum: jax.Array | None,
                                  scale: float, starts: jax.Array | None = None,
                                  ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Titans Eq. 10-15 with M(z) = z W (read after write), one token at a time:

        e_t = k_t^T W_{t-1} - v_t                      (row; u_t = k_t e_t^T is the gradient of
                                                         1/2 ||k_t^T W - v_t||^2 at W_{t-1})
        S_t = mu_t S_{t-1} - lr_t u_t                  (surprise with momentum, Eq. 10/14)
        W_t = lambda_t W_{t-1} + S_t                   (forgetting, Eq. 13)
        o_t = scale * q_t^T W_t                        (retrieval, Eq. 15)

    with lambda_t = exp(log_retention_t), mu_t = exp(log_momentum_t). With `log_momentum=None`
    there is no momentum: W_t = lambda_t W_{t-1} - lr_t u_t, and no S is carried. At a document
    start (`starts`) (W_{t-1}, S_{t-1}) are replaced by the initial states first.

    Args (fp32, validated): `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`,
    `lr, log_retention, log_momentum: [batch, seq, heads]`, `initial_state, initial_momentum:
    [batch, heads, dk, dv]` (`initial_momentum` is None iff `log_momentum` is None), `starts:
    [batch, seq, heads]` bool or None.
    Returns `o: [batch, seq, heads, dv]`, W_T and S_T (None without momentum), all fp32.
    """

    def step(carry, x):
        w, s = carry
        q_t, k_t, v_t, lr_t, log_ret_t, log_mom_t, start_t = x
        if start_t is not None:
            fresh = start_t[..., None, None]
            w = jnp.where(fresh, initial_state, w)
            s = None if s is None else jnp.where(fresh, initial_momentum, s)
        e = jnp.einsum("bhk,bhkv->bhv", k_t, w) - v_t
        u = k_t[..., :, None] * e[..., None, :]
        update = -lr_t[..., None, None] * u
        if s is not None:
            s = jnp.exp(log_mom_t)[..., None, None] * s + update
            update = s
        w = jnp.exp(log_ret_t)[..., None, None] * w + update
        return (w, s), scale * jnp.einsum("bhk,bhkv->bhv", q_t, w)

    (w, s), o = token_scan(step, (initial_state, initial_momentum), (q, k, v, lr, log_retention, log_momentum, starts))
    return o, w, s

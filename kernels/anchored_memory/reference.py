"""The oracle of `anchored_memory`: the anchored rule token by token (Titans Eq. 12-18 with the
gradient of every token of a chunk taken at the chunk's start weights), one `jax.grad` per token."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.anchored_memory.chunked import ACTIVATIONS, Weights, clip_factor, l2_loss, mlp_forward
from kernels.common import token_scan


def recurrent_anchored_memory(q, k, v, lr, log_retention, log_momentum, initial_weights: Weights,
                              initial_momentum: Weights | None, chunk_size: int, activation: str, residual: bool,
                              max_grad_norm: float, segment_ids: jax.Array | None
                              ) -> tuple[jax.Array, Weights, Weights | None]:
    """Per token t of one [batch, head], with (W, S, anchor W_a, grid position p):

        a document starts (id != previous id, id > 0): (W, S, W_a, p) <- (W_0, S_0, W_0, 0)
        u_t = grad_W ||M(k_t; W) - v_t||^2 at W = W_a;  rho_t <- rho_t min(1, tau / ||u_t||) when tau > 0
        S_t = mu_t S_{t-1} - rho_t u_t,  W_t = l_t W_{t-1} + S_t     (gd: W_t = l_t W_{t-1} - rho_t u_t)
        y_t = M(q_t; W_t);  p <- p + 1, and W_a <- W_t when p reaches `chunk_size` (then p <- 0)

    Padding (id 0) holds the state. Shapes as `chunk_anchored_memory`; returns (o fp32, W_T, S_T or None)."""
    b, t, h = q.shape[:3]
    act = ACTIVATIONS[activation]
    momentum = log_momentum is not None
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    prev = jnp.concatenate([seg[:, :1], seg[:, :-1]], axis=1)
    per_head = lambda x: jnp.broadcast_to(x[:, :, None], (b, t, h))  # noqa: E731
    starts, valid = per_head((jnp.arange(t) > 0) & (seg != prev) & (seg > 0)), per_head(seg > 0)
    s0 = initial_momentum if momentum else tuple(jnp.zeros_like(w) for w in initial_weights)
    log_mom = jnp.zeros_like(lr) if log_momentum is None else log_momentum

    def one(state, qt, kt, vt, lr_t, ret_t, mom_t, start, ok, w0, s0):
        state = jax.tree.map(lambda f, x: jnp.where(start, f, x), (w0, s0, w0, jnp.zeros((), jnp.int32)), state)
        w, s, anchor, pos = state
        u = jax.grad(lambda wa: l2_loss(mlp_forward(wa, kt[None], None, act, residual)[0], vt[None]))(anchor)
        lr_t = lr_t * clip_factor(max_grad_norm, sum(jnp.sum(ui * ui) for ui in u))
        if momentum:
            s = tuple(jnp.exp(mom_t) * si - lr_t * ui for si, ui in zip(s, u, strict=True))
            w = tuple(jnp.exp(ret_t) * wi + si for wi, si in zip(w, s, strict=True))
        else:
            w = tuple(jnp.exp(ret_t) * wi - lr_t * ui for wi, ui in zip(w, u, strict=True))
        pos = (pos + 1) % chunk_size
        anchor = jax.tree.map(lambda new, old: jnp.where(pos == 0, new, old), w, anchor)
        new = jax.tree.map(lambda a, x: jnp.where(ok, a, x), (w, s, anchor, pos), state)
        return new, mlp_forward(new[0], qt[None], None, act, residual)[0][0]

    heads = jax.vmap(jax.vmap(one))

    def step(state, x):
        qt, kt, vt, lr_t, ret_t, mom_t, start, ok = x
        return heads(state, *(y.astype(jnp.float32) for y in (qt, kt, vt)), lr_t, ret_t, mom_t, start, ok,
                     initial_weights, s0)

    start_state = (initial_weights, s0, initial_weights, jnp.zeros((b, h), jnp.int32))
    (w, s, _, _), o = token_scan(step, start_state, (q, k, v, lr, log_retention, log_mom, starts, valid))
    return o, w, (s if momentum else None)

"""The Omega rule's sliding window (ATLAS, Behrouz et al. 2025, Eq. 9-11; spec titans-atlas-tnt-hope
§3.1, §3.3, §3.6), shared by every memory whose `MemorySpec.window` c is above 1: each write descends
the loss of the last c tokens instead of the current one,

    u_t = sum_{i=t-c+1..t} omega_i grad l(W*; k_i, v_i),   omega_i = gamma_i kappa_i,

gamma_i = sigmoid(x_i w + b) the "window_weight" gate (one per token and head: the issue's per-token
gamma, `window_gates: token`) or, with `window_gates: lag`, gamma_i^(t) = sigmoid(x_t W + b)[t - i]
the "window_lag_weights" gate (c per step and head: the spec's per-lag form, §3.11 item 2, which
can switch single lags off: lag weights (1, 0, ..., 0) are the plain rule), kappa_i the
token's clip factor min(1, tau / ||grad l_i||) (tau = `max_grad_norm`, 1 when off), W* where the
learner takes its gradients (W_{t-1}, or the chunk anchor when anchored: the window's earlier tokens
are recomputed at the current anchor, spec §3.6 step 1, its default). Windows never reach across a
document start or into padding. c = 1 is the plain rule.

The window's last P = c - 1 tokens are state (`MemState.window`, a `Window` dict): their keys,
values, the gates the loss reads (gamma and the objective's own, e.g. Yaad's threshold) and a 0/1
validity, oldest first, so decoding and calls that split a sequence anywhere equal one call. The
chunk form works on a halo-extended index j over the P entries before the chunk and its C positions
(chunk position r is j = r + P): the window sum is the banded matrix Gamma[r, j] = omega_j for
r <= j <= r + P, folded into the learner's coefficients (n -> n Gamma), so per-token gradients are
never formed (spec §3.6 step 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from kernels.anchored_memory.chunked import clip_factor

from zoo.layers.gates import logit
from zoo.memory.parts import Gate, objective, register_gate

Window = dict  # {"k": [n, dk], "v": [n, dv], "gates": {name: [n]}, "valid": [n]}; {} when c = 1

# gamma_i = sigmoid(z), starting at window_gate_init
register_gate(Gate("window_weight", bias=lambda cfg: logit(cfg.window_gate_init),
                   value=lambda z, cfg: jax.nn.sigmoid(z), doc="gamma_i = sigmoid(z), the Omega window's token weight"))
# gamma^(t) = sigmoid(z) in R^c, one weight per lag 0 .. c-1 of step t's window
register_gate(Gate("window_lag_weights", bias=lambda cfg: logit(cfg.window_gate_init),
                   value=lambda z, cfg: jax.nn.sigmoid(z), width=lambda spec: spec.window,
                   doc="gamma^(t) = sigmoid(z) in R^c: the weight of each lag in step t's Omega window"))

GATE_OF_MODE = {"token": "window_weight", "lag": "window_lag_weights"}


def gate_names(spec) -> tuple[str, ...]:
    """The gates a window entry keeps: its own gamma (per-token mode) and the objective's."""
    own = ("window_weight",) if spec.window_gates == "token" else ()
    return own + objective(spec.objective).gates


def lag_weights(spec, gates: dict):
    """The step's per-lag gamma (`window_gates: lag`), or None (per-token gamma)."""
    return gates["window_lag_weights"] if spec.window_gates == "lag" else None


def empty(spec, dk: int, dv: int) -> Window:
    """The window of a document start: P invalid entries ({} when the spec has no window)."""
    if spec.window == 1:
        return {}
    p = spec.window - 1
    return dict(k=jnp.zeros((p, dk), jnp.float32), v=jnp.zeros((p, dv), jnp.float32),
                gates={name: jnp.zeros((p,), jnp.float32) for name in gate_names(spec)},
                valid=jnp.zeros((p,), jnp.float32))


def entries(spec, k, v, gates: dict, valid) -> Window:
    """Window entries of n tokens: `k: [n, dk]`, `v: [n, dv]`, gates {name: [n]}, `valid: [n]` bool."""
    return dict(k=k.astype(jnp.float32), v=v.astype(jnp.float32),
                gates={name: gates[name] for name in gate_names(spec)}, valid=valid.astype(jnp.float32))


def extend(halo: Window, new: Window, place_at=0) -> Window:
    """The halo-extended entries [P + n]: the P entries `halo` before the chunk, then `new`. With
    `place_at` = s > 0 (a call continuing mid-chunk at slot s, whose slots before s are not its own),
    the halo is written just before slot s instead, over those slots."""
    ext = jax.tree.map(lambda h, x: jnp.concatenate([jnp.zeros_like(h), x]), halo, new)
    return jax.tree.map(lambda e, h: jax.lax.dynamic_update_slice_in_dim(e, h, place_at, axis=0), ext, halo)


def tail(ext: Window, end, size: int) -> Window:
    """The window state after slot `end` - 1 of a halo-extended chunk: its `size` = P entries before
    slot `end` (end = 0: the halo itself, as for a chunk past the call's end)."""
    return jax.tree.map(lambda e: jax.lax.dynamic_slice_in_dim(e, end, size, axis=0), ext)


def weights(ext: Window, squared_norms=None, max_grad_norm: float = 0.0, lag_weights=None):
    """omega_j = valid_j gamma_j kappa_j `[n]` of the window entries ending at the current token
    (`ext`, oldest first); `squared_norms [n]`: ||grad l_j||^2, for the clip factor kappa_j
    (max_grad_norm > 0); `lag_weights [c]`: the step's per-lag gamma (lag 0 = the current token)
    instead of the entries' own."""
    gamma = ext["gates"]["window_weight"] if lag_weights is None else lag_weights[::-1]
    omega = ext["valid"] * gamma
    if max_grad_norm > 0:
        omega = omega * clip_factor(max_grad_norm, squared_norms)
    return omega


def band(omega: jax.Array, chunk: int, lag_weights: jax.Array | None = None) -> jax.Array:
    """Gamma `[C, P + C]`: Gamma[r, j] = omega_j for r <= j <= r + P (the window of chunk position
    r), times `lag_weights[r, r + P - j]` (`[C, c]`, per-lag mode) when given."""
    p = omega.shape[0] - chunk
    lag = jnp.arange(chunk)[:, None] + p - jnp.arange(omega.shape[0])[None, :]
    inside = (lag >= 0) & (lag <= p)
    per_lag = 1.0 if lag_weights is None else jnp.take_along_axis(lag_weights, jnp.clip(lag, 0, p), axis=1)
    return jnp.where(inside, omega[None, :] * per_lag, 0.0)

"""The generic memory engine: exact `step`, chunk-consistent `decode_step`, the anchored
reference loop, and the chunk-parallel `chunk` (Titans spec §1.6-1.8, DESIGN §3).

All functions here work on ONE sequence of one head: `q, k: [T, dk]`, `v: [T, dv]`, gates
`[T]` (or `[T, dk]` for channel retention); the mixer vmaps them over [batch, heads].

Online rule (neutral names: l retention, mu momentum decay, rho inner learning rate):
    u_t = grad_W l(W*; k_t, v_t)        W* = W_{t-1} (exact) or the chunk anchor W_a (anchored)
    rho_t <- rho_t min(1, tau / ||u_t||)                              (spec.max_grad_norm = tau > 0)
    S_t = mu_t S_{t-1} - rho_t u_t,     W_t = l_t W_{t-1} + S_t      (momentum; Titans Eq. 13-14)
    W_t = l_t W_{t-1} - rho_t u_t                                     (gd)
    y_t = M(q_t; W_t)                                                 (read after write, Eq. 15)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

import kernels

from zoo.memory.learners import learner_step, momentum_terms
from zoo.memory.objectives import inner_loss
from zoo.memory.retention import decay_terms, retain
from zoo.memory.spec import MemorySpec
from zoo.memory.state import MemState, initial_state
from zoo.memory.structures import Weights, activation, forward


@struct.dataclass
class Gates:
    """Per-token gates of one head, in the form the rule uses.

    lr: [T] rho_t >= 0. log_retention: [T] (or [T, dk] for channel retention) log l_t <= 0.
    log_momentum: [T] log mu_t <= 0 (ignored by the gd learner).
    """

    lr: jax.Array
    log_retention: jax.Array
    log_momentum: jax.Array

    def at(self, t) -> Gates:
        return jax.tree.map(lambda g: g[t], self)


def token_gradient(spec: MemorySpec, weights: Weights, k: jax.Array, v: jax.Array) -> Weights:
    """u = grad_W l(W; k, v) for one token (`k: [dk]`, `v: [dv]`)."""
    if spec.bilevel == "first_order":
        weights = jax.lax.stop_gradient(weights)
    return jax.grad(lambda w: inner_loss(spec, forward(spec, w, k[None])[0], v[None]))(weights)


def clip_factor(spec: MemorySpec, squared_norm: jax.Array) -> jax.Array:
    """min(1, tau / ||u||) for inner gradients of squared Frobenius norm `squared_norm` (any shape);
    1 when spec.max_grad_norm is 0. The epsilon keeps the factor differentiable at u = 0."""
    if spec.max_grad_norm <= 0:
        return jnp.ones_like(squared_norm)
    return jnp.minimum(1.0, spec.max_grad_norm * jax.lax.rsqrt(squared_norm + 1e-12))


def _apply_update(spec: MemorySpec, state: MemState, at: Weights, k, v, g: Gates) -> tuple[Weights, Weights]:
    """Retention, then the learner's update with the inner gradient taken at `at` (W_{t-1} or
    the anchor), or at the retained weights l_t W_{t-1} when spec.gradient_at == "retained";
    the step is clipped to norm spec.max_grad_norm (by scaling rho_t)."""
    kept = retain(spec, state.weights, g.log_retention)
    grads = token_gradient(spec, kept if spec.gradient_at == "retained" else at, k, v)
    lr = g.lr * clip_factor(spec, sum(jnp.sum(u * u) for u in grads))
    update, momentum = learner_step(spec, state.momentum, grads, lr, g.log_momentum)
    return tuple(w + d for w, d in zip(kept, update, strict=True)), momentum


def read(spec: MemorySpec, weights: Weights, q: jax.Array) -> jax.Array:
    """y = M(q; W) for one query `q: [dk] -> [dv]` (Titans Eq. 15: no weight update)."""
    return forward(spec, weights, q[None])[0][0]


def step(spec: MemorySpec, state: MemState, q, k, v, g: Gates) -> tuple[MemState, jax.Array]:
    """The exact per-token rule: gradient at W_{t-1}, write, then read."""
    weights, momentum = _apply_update(spec, state, state.weights, k, v, g)
    pos = (state.pos + 1) % spec.chunk_size
    anchor = jax.tree.map(lambda a, w: jnp.where(pos == 0, w, a), state.anchor, weights)
    return MemState(weights, momentum, anchor, pos), read(spec, weights, q)


def decode_step(spec: MemorySpec, state: MemState, q, k, v, g: Gates) -> tuple[MemState, jax.Array]:
    """One token on the training chunk grid: anchored memories take the gradient at the chunk
    anchor (refreshed every chunk_size tokens), exact ones at W_{t-1}. Equals `chunk`."""
    if spec.semantics == "exact":
        return step(spec, state, q, k, v, g)
    weights, momentum = _apply_update(spec, state, state.anchor, k, v, g)
    pos = (state.pos + 1) % spec.chunk_size
    anchor = jax.tree.map(lambda a, w: jnp.where(pos == 0, w, a), state.anchor, weights)
    return MemState(weights, momentum, anchor, pos), read(spec, weights, q)


def _token_loop(spec, state, init, q, k, v, gates, segment_ids, one_token):
    """lax.scan of `one_token` with document resets (to W_0) and padding (segment 0) that holds
    the fresh state without writing."""
    t = q.shape[0]
    seg = jnp.ones((t,), jnp.int32) if segment_ids is None else segment_ids
    prev = jnp.concatenate([seg[:1], seg[:-1]])
    starts = (jnp.arange(t) > 0) & (seg != prev)
    fresh = initial_state(init)

    def body(st, xs):
        qt, kt, vt, gt, start, valid = xs
        st = jax.tree.map(lambda a, b: jnp.where(start, a, b), fresh, st)
        new, y = one_token(spec, st, qt, kt, vt, gt)
        new = jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, st)
        return new, y

    return jax.lax.scan(body, state, (q, k, v, gates, starts, seg > 0))


def step_loop(spec, state, q, k, v, gates, *, init=None, segment_ids=None):
    """The exact online rule token by token (the oracle for exact semantics and for C = 1)."""
    return _token_loop(spec, state, init if init is not None else state.weights, q, k, v, gates, segment_ids, step)


def reference_chunked(spec, state, q, k, v, gates, *, init=None, segment_ids=None):
    """Token by token with gradients at the chunk anchor: the oracle for anchored `chunk`."""
    return _token_loop(spec, state, init if init is not None else state.weights, q, k, v, gates, segment_ids,
                       decode_step)


# ----------------------------------------------------------------------------------------------
# Chunk-parallel form.


def chunk_step(spec: MemorySpec, w_start: Weights, s_start: Weights, anchor: Weights,
                q, k, v, g: Gates, valid):
    """One chunk of C grid positions (invalid ones are exact no-ops), Titans spec §1.6.

    Starts from (W, S) = (w_start, s_start) with inner gradients at `anchor`:
        W_r = beta_r W_s + f_r S_s - sum_i G[r, i] u_i,   S_r = m_r S_s - sum_i n[r, i] u_i,
    with u_i = A_i^T delta_i per layer, read through the dual form (no per-token weights). A
    clipped step (spec.max_grad_norm) scales rho_i by min(1, tau / ||u_i||), known from A_i, delta_i.
    Returns ((W_C, S_C), Y [C, dv]).
    """
    vf = valid.astype(jnp.float32)
    w_a = jax.lax.stop_gradient(anchor) if spec.bilevel == "first_order" else anchor

    def key_loss(probes):
        out, inputs = forward(spec, w_a, k, probes)
        return inner_loss(spec, out, v), inputs

    probes = tuple(jnp.zeros((k.shape[0], w.shape[1]), jnp.float32) for w in w_a)
    _, vjp, inputs = jax.vjp(key_loss, probes, has_aux=True)
    (deltas,) = vjp(jnp.ones((), jnp.float32))
    # ||u_i||^2 = sum over layers of ||a_i||^2 ||delta_i||^2 (u_i = a_i^T delta_i per layer)
    squared_norm = sum(jnp.sum(a * a, -1) * jnp.sum(d * d, -1) for a, d in zip(inputs, deltas, strict=True))
    lr = g.lr * vf * clip_factor(spec, squared_norm)
    log_ret = jnp.where(valid.reshape(valid.shape + (1,) * (g.log_retention.ndim - 1)), g.log_retention, 0.0)
    log_mu = jnp.where(valid, g.log_momentum, 0.0)
    beta, decay = decay_terms(log_ret)  # [C] | [C, dk];  [C, C] | [C, C, dk]
    m, n = momentum_terms(spec, lr, log_mu)  # [C], [C, C]
    channel = spec.retention == "channel"
    if channel:
        f = jnp.einsum("rjd,j->rd", decay, vf * m)
        big_g = jnp.einsum("rjd,ji->rid", decay, vf[:, None] * n)
    else:
        f = decay @ (vf * m)
        big_g = decay @ (vf[:, None] * n)

    z = q
    new_w, new_s = [], []
    for layer, (ws, ss, a, d) in enumerate(zip(w_start, s_start, inputs, deltas, strict=True)):
        if channel:
            p = (z * beta) @ ws + (z * f) @ ss - jnp.einsum("rd,id,rid->ri", z, a, big_g) @ d
            new_w.append(beta[-1][:, None] * ws + f[-1][:, None] * ss - (a * big_g[-1]).T @ d)
        else:
            p = beta[:, None] * (z @ ws) + f[:, None] * (z @ ss) - ((z @ a.T) * big_g) @ d
            new_w.append(beta[-1] * ws + f[-1] * ss - (a * big_g[-1][:, None]).T @ d)
        new_s.append(m[-1] * ss - (a * n[-1][:, None]).T @ d if spec.has_momentum else ss)
        z = activation(spec, p) if layer < len(w_start) - 1 else p
    if spec.structure == "mlp" and spec.residual:
        z = z + q
    return (tuple(new_w), tuple(new_s)), z


def delta_kernel(spec: MemorySpec) -> str | None:
    """The `kernels` op that runs an exact l2 matrix memory chunk-parallel, or None.

    Titans' linear memory (gradient at W_{t-1}) is `momentum_delta_rule` (Titans App. C); the
    Gated DeltaNet rule (gradient at the retained weights, no momentum) is `gated_delta_rule`.
    A clipped step depends on ||u_t|| at W_{t-1}, which the kernels do not compute: token loop."""
    if not (spec.semantics == "exact" and spec.structure == "matrix" and spec.objective == "l2"
            and spec.retention != "channel" and spec.max_grad_norm == 0):
        return None
    if spec.gradient_at == "previous":
        return "momentum_delta_rule"
    return None if spec.has_momentum else "gated_delta_rule"


def dual_form(spec: MemorySpec) -> bool:
    """Whether `chunk_step` (gradients at the chunk anchor) computes this spec's rule: anchored
    memories, and exact ones whose inner gradient does not depend on W: the dot objective on a
    single linear layer (a deeper MLP's first-layer delta depends on the later layers)."""
    return spec.semantics == "anchored" or (spec.objective == "dot" and spec.num_layers == 1)


def chunk_parallel(spec: MemorySpec) -> bool:
    """Whether `chunk` has a parallel form for this spec: the dual form or a delta-rule kernel."""
    return dual_form(spec) or delta_kernel(spec) is not None


def _delta_kernel_chunk(spec: MemorySpec, state: MemState, q, k, v, g: Gates,
                       segment_ids=None) -> tuple[MemState, jax.Array]:
    """Exact l2 matrix memory through a UT-form kernel. The kernels' inner gradient is k e^T,
    Eq. 12's is 2 k e^T, so the kernel's learning rate (beta) is 2 rho. With segment_ids (from a
    fresh state) the kernel restarts every document from W_0; padding (segment 0) is a document of
    its own that never writes (rho = 0, no decay), so it holds the fresh state like the token loop."""
    expand = lambda x: x[None, :, None]  # noqa: E731  [T, ...] -> [1, T, 1, ...]
    lr, log_ret = g.lr, g.log_retention if spec.retention != "none" else jnp.zeros_like(g.lr)
    seg = None
    if segment_ids is not None:
        valid = segment_ids > 0
        lr, log_ret, seg = jnp.where(valid, lr, 0.0), jnp.where(valid, log_ret, 0.0), segment_ids[None]
    s0 = state.weights[0][None, None]
    if delta_kernel(spec) == "gated_delta_rule":
        o, w = kernels.gated_delta_rule(expand(q), expand(k), expand(v), expand(2.0 * lr), expand(log_ret), scale=1.0,
                                        initial_state=s0, output_final_state=True, chunk_size=spec.chunk_size,
                                        segment_ids=seg)
        momentum = state.momentum
    else:
        o, (w, s) = kernels.momentum_delta_rule(
            expand(q), expand(k), expand(v), expand(2.0 * lr), expand(log_ret),
            expand(g.log_momentum) if spec.has_momentum else None, scale=1.0, initial_state=s0,
            initial_momentum=state.momentum[0][None, None] if spec.has_momentum else None,
            output_final_state=True, chunk_size=spec.chunk_size, segment_ids=seg)
        momentum = (s[0, 0],) if spec.has_momentum else state.momentum
    weights = (w[0, 0],)
    pos = (state.pos + q.shape[0]) % spec.chunk_size
    return MemState(weights, momentum, weights, pos), o[0, :, 0]


def chunk(spec: MemorySpec, state: MemState | None, q, k, v, gates: Gates, *, init: Weights | None = None,
          segment_ids: jax.Array | None = None) -> tuple[MemState, jax.Array]:
    """Runs `q, k: [T, dk]`, `v: [T, dv]` through the memory, chunk-parallel where the spec
    allows it (`chunk_parallel`), token by token otherwise. Returns (final state, y [T, dv]).

    state=None starts from `init` (W_0) at position 0; a given state continues its chunk grid
    from `state.pos`, so calls may split a sequence anywhere. segment_ids ([T], only with
    state=None): a document start resets the memory to W_0; in the dual (anchored) form documents
    must start on the chunk grid (multiples of chunk_size), the delta-rule kernels take them
    anywhere; segment 0 marks padding, which never writes and holds W_0 (so a call that ends in
    padding returns the fresh state); outputs at padding positions are unspecified.
    """
    if init is None and state is None:
        raise ValueError("chunk needs the initial weights (init=) or a state to continue")
    if segment_ids is not None and state is not None:
        raise ValueError("segment_ids resets are supported from a fresh state (state=None) only")
    init = init if init is not None else state.weights
    if not chunk_parallel(spec):
        return step_loop(spec, state if state is not None else initial_state(init), q, k, v, gates,
                         init=init, segment_ids=segment_ids)

    if delta_kernel(spec) is not None:
        return _delta_kernel_chunk(spec, state if state is not None else initial_state(init), q, k, v, gates,
                                   segment_ids)
    c = spec.chunk_size
    t = q.shape[0]
    fresh = state is None
    state = initial_state(init) if fresh else state
    offset = 0 if fresh else state.pos
    n = math.ceil(((0 if fresh else c - 1) + t) / c)
    size = n * c

    def place(x):  # [T, ...] -> [n * C, ...] with the tokens at grid positions offset ... offset+T-1
        buf = jnp.zeros((size,) + x.shape[1:], x.dtype)
        return jax.lax.dynamic_update_slice(buf, x, (offset,) + (0,) * (x.ndim - 1))

    seg = jnp.ones((t,), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    seg_buf = place(seg)
    valid = seg_buf > 0
    prev = jnp.concatenate([seg_buf[:1], seg_buf[:-1]])
    resets = ((jnp.arange(size) > 0) & (seg_buf != prev) & (seg_buf > 0))[::c]  # [n], chunk starts
    xs = jax.tree.map(lambda x: place(x).reshape((n, c) + x.shape[1:]), (q, k, v, gates))
    final_chunk = (offset + t) // c
    zeros = tuple(jnp.zeros_like(w) for w in init)

    @jax.checkpoint
    def body(carry, inputs):
        w, s, anchor, result_anchor = carry
        index, reset, (qc, kc, vc, gc), vc_mask = inputs
        w, s, anchor = jax.tree.map(lambda a, b: jnp.where(reset, a, b), (init, zeros, init), (w, s, anchor))
        result_anchor = jax.tree.map(lambda a, b: jnp.where(index == final_chunk, a, b), anchor, result_anchor)
        (w, s), y = chunk_step(spec, w, s, anchor, qc, kc, vc, gc, vc_mask)
        return (w, s, w, result_anchor), y

    carry = (state.weights, state.momentum, state.anchor, state.anchor)
    (w, s, _, result_anchor), ys = jax.lax.scan(
        body, carry, (jnp.arange(n), resets, xs, valid.reshape(n, c)))
    result_anchor = jax.tree.map(lambda a, b: jnp.where(final_chunk == n, a, b), w, result_anchor)
    y = jax.lax.dynamic_slice_in_dim(ys.reshape((size,) + ys.shape[2:]), offset, t)
    pos = jnp.asarray((offset + t) % c, jnp.int32)
    final = MemState(weights=w, momentum=s, anchor=result_anchor, pos=pos)
    if segment_ids is not None:  # trailing padding holds the fresh state (as in the token loop)
        final = jax.tree.map(lambda a, b: jnp.where(seg[-1] > 0, a, b), final, MemState(init, zeros, init, pos))
    return final, y

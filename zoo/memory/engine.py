"""The generic memory engine: exact `step`, chunk-consistent `decode_step`, the anchored
reference loop, and the chunk-parallel `chunk` (Titans spec §1.6-1.8, DESIGN §3).

All functions here work on ONE sequence of one head: `q, k: [T, dk]` (`q: [T, dv]` for a transposed
read, `spec.read`: y = W q, Trellis's value memory), `v: [T, dv]`, gates a dict
{name: [T]} of the gates the spec reads (`MemorySpec.gate_names`: "lr" rho_t, "log_retention" log l_t
(`[T, sum_l d_in_l]` for channel retention: every layer's input channels), the learner's own such as "log_momentum" log mu_t); the mixer
vmaps them over [batch, heads].

Online rule (neutral names: l retention, mu momentum decay, rho inner learning rate):
    u_t = grad_W l(W*; k_t, v_t)        W* = W_{t-1} (exact) or the chunk anchor W_a (anchored)
    rho_t <- rho_t min(1, tau / ||u_t||)                              (spec.max_grad_norm = tau > 0)
    S_t = mu_t S_{t-1} - rho_t u_t,     W_t = l_t W_{t-1} + S_t      (momentum; Titans Eq. 13-14)
    W_t = l_t W_{t-1} - rho_t u_t                                     (gd)
    y_t = M(q_t; W_t)                                                 (read after write, Eq. 15)
With an Omega window (spec.window = c > 1, zoo.memory.window) u_t is the gamma-weighted sum of the
last c tokens' gradients at W*, each clipped to tau instead of their sum.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import kernels
from kernels.anchored_memory import chunked as dual
from kernels.anchored_memory.chunked import grouped_scan
from kernels.common import where_leading

from zoo.memory import parts, window
from zoo.memory.learners import learner_step, learner_terms
from zoo.memory.objectives import inner_loss
from zoo.memory.retention import retain, split_channels
from zoo.memory.spec import MemorySpec
from zoo.memory.state import MemState, initial_state
from zoo.memory.structures import Weights, activation, body, forward, has_residual


Gates = dict  # {gate name: per-token values}, the names of `MemorySpec.gate_names`


def gates_at(gates: Gates, t) -> Gates:
    """The gates of token t."""
    return jax.tree.map(lambda g: g[t], gates)


def check_gates(spec: MemorySpec, gates: Gates) -> None:
    """Raises a ValueError naming the gates the spec reads that `gates` lacks."""
    missing = [name for name in spec.gate_names if name not in gates]
    if missing:
        raise ValueError(f"the memory ({spec.learner} learner, {spec.retention} retention) reads gates "
                         f"{', '.join(spec.gate_names)}; missing: {', '.join(missing)}")


def token_gradient(spec: MemorySpec, weights: Weights, k: jax.Array, v: jax.Array, g: Gates) -> Weights:
    """u = grad_W l(W; k, v) for one token (`k: [dk]`, `v: [dv]`, `g`: its gates {name: []})."""
    if spec.bilevel == "first_order":
        weights = jax.lax.stop_gradient(weights)
    one = {name: g[name][None] for name in parts.objective(spec.objective).gates}
    return jax.grad(lambda w: inner_loss(spec, forward(spec, w, k[None])[0], v[None], one))(weights)


def window_gradient(spec: MemorySpec, weights: Weights, ext: window.Window, lag_weights=None) -> Weights:
    """u = sum_j omega_j grad l(W; k_j, v_j) over the Omega window entries ending at the current
    token (`ext` leaves [c, ...]), each token's gradient clipped to spec.max_grad_norm, weighted by
    its own gamma or by the step's `lag_weights [c]` (zoo.memory.window)."""
    grads = jax.vmap(lambda k, v, g: token_gradient(spec, weights, k, v, g))(ext["k"], ext["v"], ext["gates"])
    norms = sum(jnp.sum(u * u, axis=tuple(range(1, u.ndim))) for u in grads)
    omega = window.weights(ext, norms, spec.max_grad_norm, lag_weights)
    return tuple(jnp.tensordot(omega, u, axes=1) for u in grads)


def _apply_update(spec: MemorySpec, state: MemState, at: Weights, k, v, g: Gates) -> tuple[Weights, dict, dict]:
    """Retention, then the learner's update with the inner gradient taken at `at` (W_{t-1} or
    the anchor), or at the retained weights l_t W_{t-1} when spec.gradient_at == "retained";
    the step is clipped to norm spec.max_grad_norm (by scaling rho_t), or, with an Omega window,
    the window's gradients each. A riemannian retention pulls the gradient back at the point
    (`gradient_point`), or with a `normal_gate` scales the retained rows by it (the GLA form).
    Returns (W_t, buffers, window)."""
    kept = retain(spec, state.weights, g.get("log_retention"))
    point, pull = gradient_point(spec, kept if spec.gradient_at == "retained" else at)
    if spec.window == 1:
        grads = token_gradient(spec, point, k, v, g)
        lr = g["lr"] * dual.clip_factor(spec.max_grad_norm, sum(jnp.sum(u * u) for u in grads))
        new_window = state.window
    else:
        token = window.entries(spec, k[None], v[None], jax.tree.map(lambda x: x[None], g), jnp.ones((1,), bool))
        ext = window.extend(state.window, token)
        grads, lr = window_gradient(spec, point, ext, window.lag_weights(spec, g)), g["lr"]
        new_window = window.tail(ext, 1, spec.window - 1)
    normal_gate = parts.retention(spec.retention).normal_gate
    if normal_gate is None:
        update, buffers = learner_step(spec, state.buffers, pull(grads), lr, g)
    else:  # the GLA form: the update as taken, its normal part at `point` scales the running rows
        update, buffers = learner_step(spec, state.buffers, grads, lr, g)
        kept = (normal_gate(point, update)[:, None] * kept[0],)
    return tuple(w + d for w, d in zip(kept, update, strict=True)), buffers, new_window


def read(spec: MemorySpec, weights: Weights, q: jax.Array) -> jax.Array:
    """y = M(q; W) for one query `q: [dk] -> [dv]` (Titans Eq. 15: no weight update), through the
    retention's view of the state (`view`); a transposed read (`spec.read`) is y = W q, `q: [dv] -> [dk]`."""
    if spec.read == "transposed":
        return view(spec, weights)[0] @ q
    return forward(spec, view(spec, weights), q[None])[0][0]


def view(spec: MemorySpec, state_weights: Weights) -> Weights:
    """The weights a memory's state reads as: the state itself, or its retention's view (Moneta's
    A / ||A||_q^(q-2)). One head's matrices."""
    part = parts.retention(spec.retention)
    return state_weights if part.view is None else part.view(spec, state_weights)


def state_of_weights(spec: MemorySpec, weights: Weights) -> Weights:
    """The state whose view is `weights` (a learned W_0 -> the state a document starts from).
    One head's matrices."""
    part = parts.retention(spec.retention)
    return weights if part.of_weights is None else part.of_weights(spec, weights)


def gradient_point(spec: MemorySpec, state_weights: Weights) -> tuple[Weights, Callable]:
    """(the weights a gradient is taken at: the state's view, the map of a gradient there to the
    state's update): the identity, or for a riemannian retention the view's VJP at the state (the
    Euclidean gradient projected onto the manifold's tangent space). One head's matrices."""
    if not parts.retention(spec.retention).riemannian:
        return view(spec, state_weights), lambda grads: grads
    weights, vjp = jax.vjp(lambda w: view(spec, w), state_weights)
    return weights, lambda grads: vjp(tuple(grads))[0]


def retract(spec: MemorySpec, state_weights: Weights, done) -> Weights:
    """A riemannian retention's chunk-end retraction: `view(state)` where `done` (a chunk ended),
    the state otherwise (and always without one). One head's matrices."""
    if not parts.retention(spec.retention).riemannian:
        return state_weights
    return jax.tree.map(lambda r, w: jnp.where(done, r, w), view(spec, state_weights), state_weights)


def step(spec: MemorySpec, state: MemState, q, k, v, g: Gates) -> tuple[MemState, jax.Array]:
    """The exact per-token rule: gradient at W_{t-1}, write, then read."""
    return _advance(spec, state, *_apply_update(spec, state, state.weights, k, v, g), q)


def _advance(spec: MemorySpec, state: MemState, weights, buffers, new_window, q) -> tuple[MemState, jax.Array]:
    """The state after one token's write (the anchor moves on at the end of a chunk) and its read."""
    pos = (state.pos + 1) % spec.chunk_size
    weights = retract(spec, weights, pos == 0)
    anchor = jax.tree.map(lambda a, w: jnp.where(pos == 0, w, a), state.anchor, weights)
    return (MemState(weights=weights, anchor=anchor, pos=pos, buffers=buffers, window=new_window),
            read(spec, weights, q))


def decode_step(spec: MemorySpec, state: MemState, q, k, v, g: Gates) -> tuple[MemState, jax.Array]:
    """One token on the training chunk grid: anchored memories take the gradient at the chunk
    anchor (refreshed every chunk_size tokens), exact ones at W_{t-1}. Equals `chunk`."""
    if spec.semantics == "exact":
        return step(spec, state, q, k, v, g)
    return _advance(spec, state, *_apply_update(spec, state, state.anchor, k, v, g), q)


def _token_loop(spec, state, init, q, k, v, gates, segment_ids, one_token):
    """lax.scan of `one_token` with document resets (to W_0) and padding (segment 0) that holds
    the fresh state without writing."""
    t = q.shape[0]
    seg = jnp.ones((t,), jnp.int32) if segment_ids is None else segment_ids
    prev = jnp.concatenate([seg[:1], seg[:-1]])
    starts = (jnp.arange(t) > 0) & (seg != prev)
    fresh = initial_state(spec, init)

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
               q, k, v, g: Gates, valid, halo: window.Window, place_at, end, read: bool = True):
    """One chunk of C grid positions (invalid ones are exact no-ops), Titans spec §1.6: starts from
    (W, S) = (w_start, s_start) with inner gradients at `anchor`, in four hooks (the shared chunk
    algebra of `kernels.anchored_memory.chunked`): gradient factors of the spec's objective ->
    the learner's terms -> retention -> the dual read.

    With an Omega window (spec.window > 1; ATLAS spec §3.6) the gradient factors run over the
    halo-extended keys (the window entries `halo` before the chunk, placed before slot `place_at`
    of a call continuing mid-chunk, then the chunk's own) and the band Gamma of window weights
    folds into the learner's terms (n -> n Gamma). `end`: the slot after the call's last token in
    this chunk (C for a chunk it fills, 0 past its end), where the returned window is cut.
    `read` False: the chunk-end state only (no C x C read terms in the closed form; Y is None).
    Returns ((W_C, S_C), Y [C, dv], the window after the chunk: {} without one)."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    w_a = jax.lax.stop_gradient(anchor) if spec.bilevel == "first_order" else anchor
    clip = functools.partial(dual.clip_factor, spec.max_grad_norm) if spec.max_grad_norm > 0 else None
    if spec.window > 1:
        ext = window.extend(halo, window.entries(spec, k, v, g, valid), place_at)
        keys, values, loss_gates = ext["k"], ext["v"], ext["gates"]
    else:
        keys, values, loss_gates = k, v, g
    objective_gates = {name: loss_gates[name] for name in parts.objective(spec.objective).gates}

    w_grad, pull = gradient_point(spec, w_a)  # gradients at the weights the anchor's state reads as

    def key_loss(probes):
        out, inputs = forward(spec, w_grad, keys, probes)
        return inner_loss(spec, out, values, objective_gates), inputs

    probes = tuple(jnp.zeros((keys.shape[0], w.shape[1]), jnp.float32) for w in w_a)
    learner_gates = {name: jnp.where(valid, g[name], 0.0) for name in parts.learner(spec.learner).gates}
    if spec.window > 1:  # omega_j = gamma_j valid_j kappa_j on the extended index, Gamma the band
        lag_weights = window.lag_weights(spec, g)  # [C, c]: gamma per step and lag instead of gamma_j
        token_gamma = ext["gates"]["window_weight"] if lag_weights is None else jnp.ones_like(ext["valid"])
        inputs, deltas, omega = dual.gradient_factors(key_loss, probes, token_gamma, ext["valid"] > 0, clip)
        lr = g["lr"] * valid.astype(jnp.float32)
        m, n = learner_terms(spec, lr, learner_gates)  # [C], [C, C]
        n = n @ window.band(omega, k.shape[0], lag_weights)  # [C, P + C]
        halo = window.tail(ext, end, spec.window - 1)
    else:
        inputs, deltas, lr = dual.gradient_factors(key_loss, probes, g["lr"], valid, clip)
        m, n = learner_terms(spec, lr, learner_gates)  # [C], [C, C]
    log_retention = g.get("log_retention", jnp.zeros_like(lr))
    if log_retention.ndim == 2:  # channel retention: one decay per input channel of each layer
        log_retention = tuple(split_channels(w_start, log_retention))
    write, read_view = parts.learner(spec.learner).write, parts.retention(spec.retention).view
    if write is not None or read_view is not None:  # Muon's write, Moneta's / Memora's view: per position
        forget = parts.retention(spec.retention)
        gla = forget.normal_gate is not None  # Lattice's GLA form: the updates' normal parts gate the rows
        state, y = dual.positionwise_read(
            w_start, s_start, q, inputs, deltas, log_retention, m, n, valid, write=write, write_gates=learner_gates,
            view=None if read_view is None else functools.partial(read_view, spec),
            pullback=pull if forget.riemannian and not gla else None,
            channel_gates=normal_gates(forget.normal_gate, w_grad, inputs, deltas, lr) if gla else None,
            activation=functools.partial(activation, spec), residual=has_residual(spec), output_norm=spec.output_norm,
            body=body(spec))
        return state, y, halo
    if isinstance(log_retention, tuple):  # per layer: its own (beta, f, G) over its input channels
        terms = [dual.decayed_terms(part, m, n, valid, last_only=not read) for part in log_retention]
        beta, f, big_g = (tuple(layer[i] for layer in terms) for i in range(3))
    else:
        beta, f, big_g = dual.decayed_terms(log_retention, m, n, valid, last_only=not read)
    state, y = dual.dual_read(w_start, s_start, q, inputs, deltas, beta, f, big_g, m, n,
                              activation=functools.partial(activation, spec), residual=has_residual(spec),
                              output_norm=spec.output_norm, momentum=_dual_state(spec) is not None, body=body(spec),
                              transposed=spec.read == "transposed", read=read)
    return state, y, halo


def normal_gates(normal_gate: Callable, point: Weights, inputs, deltas, lr: jax.Array) -> jax.Array:
    """A GLA-form retention's factors `[C, dk]` for a chunk of gradient descent: `normal_gate` of each
    token's update -rho_i u_i (u_i = A_i^T delta_i per layer, `lr: [C]` the effective rho, 0 where
    invalid) at the anchor's `point`."""
    def one(a, d, rho):
        return normal_gate(point, tuple(-rho * jnp.outer(x, y) for x, y in zip(a, d, strict=True)))

    return jax.vmap(one)(inputs, deltas, lr)


def _dual_state(spec: MemorySpec) -> str | None:
    """The buffer the chunk form carries as S (the momentum), or None."""
    return parts.learner(spec.learner).dual_state


def delta_kernel(spec: MemorySpec) -> str | None:
    """The `kernels` op that runs an exact l2 matrix memory chunk-parallel, or None.

    Titans' linear memory (gradient at W_{t-1}) is `momentum_delta_rule` (Titans App. C); the
    Gated DeltaNet rule (gradient at the retained weights, no momentum) is `gated_delta_rule`.
    A clipped step depends on ||u_t|| at W_{t-1}, which the kernels do not compute: token loop."""
    forget = parts.retention(spec.retention)
    if not (spec.semantics == "exact" and parts.structure(spec.structure).linear and spec.objective == "l2"
            and spec.learner in ("gd", "momentum")  # the two learners the kernels implement
            and forget.multiplicative and forget.view is None and forget.gate != "channel"
            and spec.max_grad_norm == 0 and spec.window == 1 and spec.read == "forward"):
        return None
    if spec.gradient_at == "previous":
        return "momentum_delta_rule"
    return "gated_delta_rule" if spec.learner == "gd" else None


def anchored_kernel(spec: MemorySpec) -> bool:
    """Whether `kernels.anchored_memory` computes this spec's rule (Titans' deep memory): anchored
    semantics, the l2 objective, gd or momentum, no or scalar retention, a matrix or MLP stack
    (clipped or not, no output norm) and full bilevel gradients. Other anchored memories run the same chunk algebra through
    `scan_chunks` with the spec's registered parts."""
    return (spec.semantics == "anchored" and spec.objective == "l2" and spec.learner in ("gd", "momentum")
            and spec.retention in ("none", "scalar") and spec.structure in ("matrix", "mlp")
            and spec.bilevel == "full" and not spec.output_norm and spec.window == 1 and spec.read == "forward")


def anchored_kernel_heads(spec: MemorySpec, fresh: MemState, q, k, v, g: Gates,
                          segment_ids: jax.Array | None = None) -> tuple[MemState, jax.Array]:
    """A fresh sequence of a whole number of chunks through `kernels.anchored_memory`, all heads in
    one call on `spec.kernel_backend`. q, k: [B, H, T, dk], v: [B, H, T, dv], gates [B, H, T],
    `fresh` leaves [B, H, ...]; segment_ids [B, T] (documents on the chunk grid, 0 = padding).
    Returns (state, y [B, H, T, dv])."""
    to_kernel = lambda x: jnp.moveaxis(x, 1, 2)  # noqa: E731  [B, H, T, ...] -> [B, T, H, ...]
    lr = g["lr"]
    momentum = _dual_state(spec) is not None
    o, (w, s) = kernels.anchored_memory(
        to_kernel(q), to_kernel(k), to_kernel(v), to_kernel(lr), to_kernel(g.get("log_retention", jnp.zeros_like(lr))),
        to_kernel(g["log_momentum"]) if momentum else None, initial_weights=fresh.weights,
        initial_momentum=dual_momentum(spec, fresh) if momentum else None, chunk_size=spec.chunk_size,
        activation=spec.activation, residual=has_residual(spec), max_grad_norm=spec.max_grad_norm,
        output_final_state=True, segment_ids=segment_ids,
        backend=spec.kernel_backends)
    state = MemState(weights=w, anchor=w, pos=fresh.pos, buffers=dual_buffers(spec, s) if momentum else {})
    return state, jnp.moveaxis(o, 2, 1)


def dual_form(spec: MemorySpec) -> bool:
    """Whether `chunk_step` (gradients at the chunk anchor) computes this spec's rule: memories whose
    learner has chunk terms (its update, or its momentum with a per-position `write` such as Muon's,
    is linear in the gradients) and whose retention is multiplicative (zoo.memory.parts; one decay
    per head under a learner's per-position `write`), when
    anchored, or exact with an objective whose gradient does not depend on W on a single linear
    layer (a deeper MLP's first-layer delta depends on the later layers)."""
    forget, part = parts.retention(spec.retention), parts.learner(spec.learner)
    if not (part.terms is not None and forget.multiplicative):
        return False
    if part.write is not None and forget.gate == "channel":
        return False
    if forget.riemannian:  # one pullback at the anchor for the chunk; a momentum buffer would hold
        return spec.semantics == "anchored" and part.dual_state is None  # unpulled gradients
    weight_free = not parts.objective(spec.objective).gradient_depends_on_weights
    return spec.semantics == "anchored" or (weight_free and spec.num_layers == 1)


def chunk_parallel(spec: MemorySpec) -> bool:
    """Whether `chunk` has a parallel form for this spec: the dual form or a delta-rule kernel."""
    return dual_form(spec) or delta_kernel(spec) is not None


def delta_kernel_heads(spec: MemorySpec, state: MemState, q, k, v, g: Gates,
                       segment_ids: jax.Array | None = None) -> tuple[MemState, jax.Array]:
    """Exact l2 matrix memory for all heads in ONE kernel call (`delta_kernel(spec)` names it), tiled
by `spec.kernel_chunk` on `spec.kernel_backend`.

    q, k: [B, H, T, dk], v: [B, H, T, dv], gates [B, H, T]; `state` leaves have leading [B, H]
    (a fresh call passes the initial state W_0 broadcast over the batch). The kernels take
    [batch, seq, heads, dim]. Their inner gradient is k e^T, Eq. 12's is 2 k e^T, so the kernel's
    learning rate (beta) is 2 rho. segment_ids [B, T] (fresh calls): the kernel restarts every
    document from the initial state; padding (segment 0) is a document of its own that never writes
    (rho = 0, no decay), so it holds the fresh state like the token loop. Returns (state, y [B, H, T, dv]).
    """
    to_kernel = lambda x: jnp.moveaxis(x, 1, 2)  # noqa: E731  [B, H, T, ...] -> [B, T, H, ...]
    q, k, v = (to_kernel(x.astype(jnp.float32)) for x in (q, k, v))
    lr = g["lr"]
    log_ret = g.get("log_retention", jnp.zeros_like(lr))
    if segment_ids is not None:
        valid = (segment_ids > 0)[:, None, :]
        lr, log_ret = jnp.where(valid, lr, 0.0), jnp.where(valid, log_ret, 0.0)
    lr, log_ret = to_kernel(2.0 * lr), to_kernel(log_ret)
    common = dict(scale=1.0, initial_state=state.weights[0], output_final_state=True, chunk_size=spec.kernel_chunk,
                  segment_ids=segment_ids, backend=spec.kernel_backends)
    momentum = spec.learner == "momentum"
    if delta_kernel(spec) == "gated_delta_rule":
        o, w = kernels.gated_delta_rule(q, k, v, lr, log_ret, **common)
        buffers = state.buffers
    else:
        o, (w, s) = kernels.momentum_delta_rule(
            q, k, v, lr, log_ret, to_kernel(g["log_momentum"]) if momentum else None,
            initial_momentum=state.buffers["momentum"][0] if momentum else None, **common)
        buffers = {"momentum": (s,)} if momentum else state.buffers
    pos = (state.pos + q.shape[1]) % spec.chunk_size
    return MemState(weights=(w,), anchor=(w,), pos=pos, buffers=buffers), jnp.moveaxis(o, 2, 1)


def place_on_grid(x: jax.Array, offset, n: int, c: int, axis: int = 0) -> jax.Array:
    """`x` with T tokens on `axis` -> `[n, ..., C, ...]`: the tokens at grid positions offset ...
    offset+T-1 of n chunks of C (zeros elsewhere), chunks first (`offset` may be traced)."""
    shape = x.shape[:axis] + (n * c,) + x.shape[axis + 1:]
    start = [0] * x.ndim
    start[axis] = offset
    buf = jax.lax.dynamic_update_slice(jnp.zeros(shape, x.dtype), x, start)
    return jnp.moveaxis(buf.reshape(x.shape[:axis] + (n, c) + x.shape[axis + 1:]), axis, 0)


def dual_momentum(spec: MemorySpec, state: MemState) -> Weights:
    """S of the chunk form from a state: its momentum buffer, or zeros when the learner has none."""
    name = _dual_state(spec)
    return state.buffers[name] if name else tuple(jnp.zeros_like(w) for w in state.weights)


def dual_buffers(spec: MemorySpec, s: Weights) -> dict:
    """The state's buffers from the chunk form's S."""
    name = _dual_state(spec)
    return {name: s} if name else {}


@dataclasses.dataclass(frozen=True)
class ChunkHooks:
    """A block's part of each chunk in `scan_chunks` (DESIGN §3's per-chunk prologue):

    prologue(anchor, carry, x, here, reset) -> ((q, k, v, gates), carry, aux): the chunk's writes
        `q, k: [B, H, C, dk]`, `v: [B, H, C, dv]`, gates {name: [B, H, C, ...]}, from the chunk's
        inputs `x` (the leaves of `xs`, C tokens on their token axis), the weights at the chunk start
        `anchor` (leaves [B, H, ...]: where anchored reads and inner gradients are taken) and the
        block's own `carry`; `here: [C]` marks this call's tokens, `reset: [B]` document starts.
    epilogue(y, aux, carry, done) -> (out, carry): the chunk's output (C tokens on the token axis)
        from the memory's reads `y: [B, H, C, dv]`; `done`: the chunk's last position is this
        call's (the chunk is complete).
    """

    prologue: Callable
    epilogue: Callable
    reads: bool = True  # False: the epilogue ignores `y` (None), so the chunk step skips the reads


# The plain memory: its writes are its inputs (q, k, v, gates), its output the reads.
MEMORY_ONLY = ChunkHooks(prologue=lambda anchor, carry, x, here, reset: (x, carry, None),
                         epilogue=lambda y, aux, carry, done: (y, carry))


def scan_chunks(spec: MemorySpec, state: MemState | None, fresh: MemState, carry, xs, hooks: ChunkHooks, *,
                axis: int, segment_ids: jax.Array | None = None):
    """The chunk-parallel (dual) form over [batch, heads], for the plain memory (`MEMORY_ONLY`) and
    for blocks that compute their writes per chunk (Titans MAC retrieves at the chunk anchor and
    attends within the chunk first). Per chunk of C grid positions: a document start resets the
    memory to `fresh`; `hooks.prologue` gives the writes; `chunk_step` writes them for every
    [batch, head] (gradients at the anchor, read after write, invalid positions no-ops);
    `hooks.epilogue` gives the output. The scan is `grouped_scan` (checkpointed).

    state: None for a fresh sequence (from `fresh` at grid position 0), or the state to continue
        (leaves [B, H, ...], every [batch, head] at the same `pos`; the grid is padded for any pos).
    fresh: the state a document starts from (leaves [B, H, ...]).
    carry: the block's own state between chunks (the hooks' `carry`; returned).
    xs: per-token inputs, leaves `[B, ..., T, ...]` with the tokens on `axis`.
    segment_ids: [B, T]: documents start on the grid (multiples of C; in a continued call too,
        where the state's document goes on until the ids change), 0 is padding (never written).
    A fresh call carries only (W, S) between chunks (W is each chunk's anchor) and runs a partial
    last chunk after the scan, so its start weights are the returned anchor; a continued call uses
    the state's anchor in its first chunk and records the start weights of the chunk it ends in.
    Returns (final state, carry, out: leaves with the T tokens on `axis`).
    """
    c = spec.chunk_size
    lead = jax.tree.leaves(xs)[0]
    b, t = lead.shape[0], lead.shape[axis]
    offset = 0 if state is None else state.pos.reshape(-1)[0]
    n = math.ceil(t / c) if state is None else math.ceil((c - 1 + t) / c)
    present = place_on_grid(jnp.ones((t,), bool), offset, n, c)  # [n, C]
    if segment_ids is None:
        seg = jnp.ones((n, b, c), jnp.int32)
        resets = jnp.zeros((n, b), bool)
    else:
        seg = place_on_grid(segment_ids.astype(jnp.int32), offset, n, c, axis=1)  # [n, B, C]
        prev = jnp.concatenate([jnp.zeros((1, b), jnp.int32), seg[:-1, :, -1]])
        resets = (jnp.arange(n)[:, None] > 0) & (seg[:, :, 0] != prev) & (seg[:, :, 0] > 0)
    # per chunk: the slot after the call's last token (C before it, 0 past it: the Omega window's
    # cut) and where a continued call's window sits (before its first token, in its first chunk)
    ends = jnp.clip(offset + t - c * jnp.arange(n), 0, c)
    places = jnp.zeros((n,), jnp.int32).at[0].set(offset)
    inputs = (jax.tree.map(lambda x: place_on_grid(x, offset, n, c, axis), xs), present,
              present[:, None, :] & (seg > 0), resets, ends, places)  # chunks first; valid [n, B, C]: written
    write = jax.vmap(jax.vmap(functools.partial(chunk_step, spec, read=hooks.reads),
                              in_axes=(0,) * 7 + (None, 0, None, None)), in_axes=(0,) * 9 + (None, None))
    fresh_s = dual_momentum(spec, fresh)
    momentum = _dual_state(spec) is not None

    def one_chunk(w, s, anchor, halo, block, chunk_inputs):
        """-> ((W, S) at the chunk end, the anchor it used, the Omega window after it, the block
        carry, the chunk's output)."""
        x, here, ok, reset, end, place_at = chunk_inputs
        w, s, anchor, halo = where_leading(reset, (fresh.weights, fresh_s, fresh.weights, fresh.window),
                                           (w, s, anchor, halo))
        (q, k, v, gates), block, aux = hooks.prologue(anchor, block, x, here, reset)
        (w, s), y, halo = write(w, s, anchor, q, k, v, gates, ok, halo, place_at, end)
        w = jax.vmap(jax.vmap(lambda x: retract(spec, x, here[-1])))(w)  # a riemannian memory's chunk end
        out, block = hooks.epilogue(y, aux, block, here[-1])
        return (w, s), anchor, halo, block, out

    if state is None:
        full = t // c

        def body(loop, chunk_inputs):  # (W, S) only: a fresh chunk's anchor is its start weights
            (w, s, halo), block = loop
            s = s if momentum else fresh_s
            (w, s), _, halo, block, out = one_chunk(w, s, w, halo, block, chunk_inputs)
            return ((w, s if momentum else (), halo), block), out

        ((w, s, halo), carry), outs = grouped_scan(
            body, ((fresh.weights, fresh_s if momentum else (), fresh.window), carry),
            jax.tree.map(lambda x: x[:full], inputs))
        s = s if momentum else fresh_s
        anchor = w
        if full < n:  # the partial last chunk: its start weights are the state's anchor
            (w, s), anchor, halo, carry, tail = one_chunk(w, s, w, halo, carry,
                                                          jax.tree.map(lambda x: x[full], inputs))
            outs = jax.tree.map(lambda o, x: jnp.concatenate([o, x[None]]), outs, tail)
    else:
        final_chunk = (offset + t) // c  # the chunk the call ends in (n when it ends on the grid)

        def body(loop, indexed):  # index counts from 1: grouped_scan's zero padding never matches
            (w, s, result_anchor, halo), block = loop
            index, chunk_inputs = indexed
            anchor = jax.tree.map(lambda a, x: jnp.where(index == 1, a, x), state.anchor, w)
            (w, s), anchor, halo, block, out = one_chunk(w, s, anchor, halo, block, chunk_inputs)
            result_anchor = jax.tree.map(lambda a, r: jnp.where(index == final_chunk + 1, a, r), anchor,
                                         result_anchor)
            return ((w, s, result_anchor, halo), block), out

        start = (state.weights, dual_momentum(spec, state), state.anchor, state.window)
        ((w, s, anchor, halo), carry), outs = grouped_scan(body, (start, carry), (jnp.arange(1, n + 1), inputs))
        anchor = jax.tree.map(lambda x, a: jnp.where(final_chunk == n, x, a), w, anchor)
    pos = jnp.full(fresh.pos.shape, (offset + t) % c, jnp.int32)
    final = MemState(weights=w, anchor=anchor, pos=pos, buffers=dual_buffers(spec, s), window=halo)
    out = jax.tree.map(lambda o: jax.lax.dynamic_slice_in_dim(
        jnp.moveaxis(o, 0, axis).reshape(o.shape[1:axis + 1] + (n * c,) + o.shape[axis + 2:]), offset, t, axis=axis),
        outs)
    return final, carry, out


def initial_heads(spec: MemorySpec, init: Weights, batch: int) -> MemState:
    """The fresh state of every [batch, head] from the per-head initial weights `init` (leaves [H, ...])."""
    per_head = jax.vmap(lambda w: initial_state(spec, w))(init)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch,) + a.shape), per_head)


def chunk_heads(spec: MemorySpec, state: MemState | None, q, k, v, gates: Gates, *, init: Weights,
                segment_ids: jax.Array | None = None) -> tuple[MemState, jax.Array]:
    """`chunk` for every [batch, head] at once: `q, k: [B, H, T, dk]`, `v: [B, H, T, dv]`, gates
    {name: [B, H, T, ...]}, `init` the per-head W_0 (leaves [H, ...]), `state` (leaves [B, H, ...])
    or None, `segment_ids: [B, T]` (with a state too: the memory restarts at W_0 where the ids
    change, on the chunk grid; TNT's shard resets). Returns (state, y [B, H, T, dv]). All heads in one call: the exact
    delta-rule kernels; `kernels.anchored_memory` for Titans' deep memory on fresh sequences of whole
    chunks (training); `scan_chunks` for the rest of the dual form; the token loop otherwise (per head)."""
    check_gates(spec, gates)
    fresh = initial_heads(spec, init, q.shape[0])
    if not dual_form(spec):  # the dual form casts inside each chunk (inputs may be bfloat16)
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    # resets in a continued call (TNT's shards): the kernels would restart from the state's weights
    continued_resets = segment_ids is not None and state is not None
    if delta_kernel(spec) is not None and not continued_resets:
        return delta_kernel_heads(spec, fresh if state is None else state, q, k, v, gates, segment_ids)
    if not dual_form(spec):  # token by token: the exact rule, or gradients at the anchor
        def one(st, q, k, v, g, w0, seg):
            return reference_chunked(spec, st, q, k, v, g, init=w0, segment_ids=seg)

        per_head = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None))
        return jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0, None, 0 if segment_ids is not None else None))(
            fresh if state is None else state, q, k, v, gates, init, segment_ids)
    if state is None and anchored_kernel(spec) and q.shape[2] % spec.chunk_size == 0:
        final, y = anchored_kernel_heads(spec, fresh, q, k, v, gates, segment_ids)
    else:  # continued calls, partial chunks, and anchored memories of other parts
        final, _, y = scan_chunks(spec, state, fresh, (), (q, k, v, gates), MEMORY_ONLY, axis=2,
                                  segment_ids=segment_ids)
    if segment_ids is not None:  # trailing padding holds the fresh state (as in the token loop)
        final = where_leading(segment_ids[:, -1] > 0, final, fresh.replace(pos=final.pos))
    return final, y


def chunk(spec: MemorySpec, state: MemState | None, q, k, v, gates: Gates, *, init: Weights | None = None,
          segment_ids: jax.Array | None = None) -> tuple[MemState, jax.Array]:
    """Runs `q, k: [T, dk]`, `v: [T, dv]` of one sequence and head through the memory
    (`chunk_heads` with one batch row and one head): chunk-parallel where the spec allows it
    (`chunk_parallel`), token by token otherwise. Returns (final state, y [T, dv]).

    state=None starts from `init` (W_0) at position 0; a given state continues its chunk grid
    from `state.pos`, so calls may split a sequence anywhere. segment_ids ([T], only with
    state=None): a document start resets the memory to W_0; in the dual (anchored) form documents
    must start on the chunk grid (multiples of chunk_size), the delta-rule kernels take them
    anywhere; segment 0 marks padding, which never writes and holds W_0 (so a call that ends in
    padding returns the fresh state); outputs at padding positions are unspecified.
    """
    if init is None and state is None:
        raise ValueError("chunk needs the initial weights (init=) or a state to continue")
    lift = lambda tree: jax.tree.map(lambda x: x[None, None], tree)  # noqa: E731  one batch row, one head
    final, y = chunk_heads(spec, None if state is None else lift(state), lift(q), lift(k), lift(v), lift(gates),
                           init=jax.tree.map(lambda x: x[None], init if init is not None else state.weights),
                           segment_ids=None if segment_ids is None else segment_ids[None])
    return jax.tree.map(lambda x: x[0, 0], final), y[0, 0]

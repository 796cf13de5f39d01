"""Self-modifying Titans (Nested Learning §8.1-8.2, arXiv:2512.24695; spec §5.2-5.3): the token
mixer of Hope. Every projection except the query is a memory that rewrites itself in context.

Per head, five memories M_box (box in k, v, eta, alpha, mem), each a residual 2-layer MLP
M(z) = z + sigma(z W_2) W_1 (W_2: [d, e], W_1: [e, d], row vectors) with a learned initial state,
read from the input u_t = x_t W_u (per head):
    k_t = L2(M_k(u_t)),  v_t = M_v(u_t),  eta_t = lr_max sigmoid(<M_eta(u_t), r_eta> + b_eta),
    alpha_t = sigmoid(<M_alpha(u_t), r_alpha> + b_alpha),  q_t = L2(x_t W_q)  (not adaptive),
    v^_box,t = M_box(v_t)                                              (self-generated targets)
    y_t = M_mem(q_t)
and every memory takes the Delta Gradient Descent step with weight decay (Eq. 88-93), layer by layer
with each layer's own input a (k for W_2, sigma(k W_2) for W_1; spec §5.3), on L = ||M(k_t) - v^_box,t||^2:
    W <- (alpha_t I - eta_t a^ a^T) W - eta_t s_t grad_W L(M_anchor; k_t, v^_box,t),   a^ = a / ||a||,
with s_t = min(1, tau / ||grad||) (`max_grad_norm`, as the engine clips Titans' inner steps).
Chunked (Eq. 90-91, spec §5.2): every quantity of a chunk (k, v, eta, alpha, v^, the gradients and
the reads y) comes from the memories at the chunk start (the anchor); only the (alpha I - eta a a^T)
transition acts on the running state, token after token: a gated delta rule, run chunk-parallel by
`kernels.gated_delta_rule` (chunk_update). The read at the anchor is causal (the
printed C ceil(t / C) would read the chunk end: spec §5.2). Decoding is the same computation one
token at a time (running state, anchor, position in the chunk), so it equals training at any chunk
size. Document starts (on the chunk grid) restart every memory at its learned initial state.

Our choices (docs/fidelity.md "Hope"): one chunk size for all five memories (the paper uses one for
M_mem and one for the rest, sizes unstated); normalised activations in the transition (a^, so the
factor stays a contraction for eta <= 1); no momentum (the ablation suggests one: not built).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import kernels
from flax import nnx, struct
from kernels.common import where_leading

from zoo.layers import Projection, ShortConv, constant_param, logit
from zoo.layers.recompute import recompute
from zoo.memory.layer import run_mixer

MEMORIES = ("k", "v", "eta", "alpha", "mem")
ALPHA_FLOOR = 1e-3  # the smallest weight-decay factor alpha_t (a step keeps at least 0.1% of W)


@dataclasses.dataclass(frozen=True)
class HopeFormat:
    """model.hope (model.name=hope): the self-modifying Titans mixer and the continuum memory.

    chunk: the chunk size of the self-modifying memories (every quantity of a chunk comes from its
        start state, so a token sees its own chunk only through the conv); 1 = the per-token
        recurrence of Eq. 86-88.
    conv_width: the causal depthwise conv on u and q (present in Hope, omitted from its equations).
    expansion: the memories' hidden width e = expansion * head_dim.
    lr_max, lr_init: eta_t = lr_max * sigmoid(.), eta_t = lr_init at initialisation.
    decay_init: 1 - alpha_t at initialisation (the weight decay of DGD).
    max_grad_norm: tau > 0 scales each token's inner gradient (all layers of one memory) to norm at
        most tau, as the engine's `memory.max_grad_norm` (a deep memory's self-generated targets
        make unclipped writes diverge: docs/fidelity.md "Hope"); 0 = off.
    cms_periods: the Continuum Memory System (zoo/layers/cms.py): one SwiGLU MLP level per
        entry, level i's parameters updated by the outer optimiser every cms_periods[i] steps with the
        gradients summed since its last update (spec §5.3 reading (A)); [1] = a plain MLP.
    """

    chunk: int = 16
    conv_width: int = 4
    expansion: int = 1
    lr_max: float = 1.0
    lr_init: float = 0.1
    decay_init: float = 0.01
    max_grad_norm: float = 1.0
    cms_periods: tuple[int, ...] = (1, 4, 16)

    def check(self) -> None:
        """ValueError naming the bad field."""
        if self.chunk < 1 or self.expansion < 1 or self.conv_width < 1:
            raise ValueError(f"hope.chunk, hope.expansion and hope.conv_width must be >= 1, got {self.chunk}, "
                             f"{self.expansion}, {self.conv_width}")
        if not 0 < self.lr_init < self.lr_max:
            raise ValueError(f"hope.lr_init={self.lr_init} must lie strictly between 0 and hope.lr_max={self.lr_max}")
        if self.max_grad_norm < 0:
            raise ValueError(f"hope.max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        if not 0 < self.decay_init < 1:
            raise ValueError(f"hope.decay_init must lie strictly between 0 and 1, got {self.decay_init}")
        if not self.cms_periods or any(p < 1 for p in self.cms_periods):
            raise ValueError(f"hope.cms_periods must list one update period >= 1 per level, got "
                             f"{list(self.cms_periods)}")


@struct.dataclass
class SelfModState:
    """weights / anchor: {memory: (W_2 [B, H, d, e], W_1 [B, H, e, d])}, the running state and the
    chunk-start state; pos: [B] the position in the chunk grid; conv_tail: [B, K-1, 2 H d]."""

    weights: dict
    anchor: dict
    pos: jax.Array
    conv_tail: jax.Array


def _l2(x, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def mlp(w, z):
    """M(z) = z + sigma(z W_2) W_1 for `z: [..., d]` with w = (W_2 [d, e], W_1 [e, d])."""
    return z + jax.nn.gelu(z @ w[0]) @ w[1]


def _step_terms(w, k, target):
    """At the anchor weights w, for one token (`k`, `target`: [d]): each layer's input a (k for W_2,
    GELU(k W_2) for W_1) and output error delta, so that grad_W ||M(k) - target||^2 = a delta^T."""
    hidden = k @ w[0]
    act = jax.nn.gelu(hidden)
    err = 2.0 * (k + act @ w[1] - target)  # [d]
    delta = (w[1] @ err) * jax.grad(lambda h: jnp.sum(jax.nn.gelu(h)))(hidden)  # [e]
    return (k, act), (delta, err)


def _clip_scale(inputs, deltas, max_grad_norm: float):
    """s = min(1, tau / ||grad||) over the memory's layers (rank one each: ||a delta^T|| = |a| |delta|);
    no sqrt at 0 (padding's zero gradient has an infinite sqrt derivative). 1 when tau = 0."""
    if max_grad_norm <= 0:
        return jnp.ones(inputs[0].shape[:-1])
    sq = sum(jnp.sum(a * a, -1) * jnp.sum(d * d, -1) for a, d in zip(inputs, deltas, strict=True))
    clipped = sq > max_grad_norm ** 2
    return jnp.where(clipped, max_grad_norm * jax.lax.rsqrt(jnp.where(clipped, sq, 1.0)), 1.0)


def chunk_update(anchor: dict, running: dict, u, q, valid, readouts, max_grad_norm: float = 0.0):
    """One chunk of one head: `u, q: [C, d]` (valid: [C] bool, invalid slots change nothing), the
    memories at the chunk start `anchor` and the running state `running` (both {memory: (W_2, W_1)}).
    `readouts`: {"eta": (r [d], b, lr_max), "alpha": (r [d], b)}; `max_grad_norm`: HopeFormat's.
    Returns (running after the chunk, y [C, d] read at the anchor).

    Per token and layer the update W <- (alpha I - eta a^ a^T) W - eta s a delta^T is the gated delta
    rule S <- exp(g)(I - beta k k^T) S + beta k v^T with k = a^, exp(g) = alpha, beta = eta / alpha and
    v = -alpha s |a| delta, so the chunk's transitions run as one `kernels.gated_delta_rule` call per
    layer with the five memories as its heads (chunk-parallel, exact: its UT form)."""
    read = jax.vmap(mlp, in_axes=(None, 0))
    k = _l2(read(anchor["k"], u))
    v = read(anchor["v"], u)
    r_eta, b_eta, lr_max = readouts["eta"]
    r_alpha, b_alpha = readouts["alpha"]
    eta = lr_max * jax.nn.sigmoid(read(anchor["eta"], u) @ r_eta + b_eta)  # [C]
    # alpha >= ALPHA_FLOOR: the kernel's beta = eta / alpha must stay finite (and log alpha too)
    alpha = jnp.maximum(jax.nn.sigmoid(read(anchor["alpha"], u) @ r_alpha + b_alpha), ALPHA_FLOOR)  # [C]
    eta, alpha = jnp.where(valid, eta, 0.0), jnp.where(valid, alpha, 1.0)
    y = read(anchor["mem"], _l2(q))
    inputs, deltas = zip(*[jax.vmap(_step_terms, in_axes=(None, 0, 0))(anchor[name], k, read(anchor[name], v))
                           for name in MEMORIES], strict=True)  # self-generated targets v^ = M_box(v) at the anchor
    scale = jnp.stack([_clip_scale(a, d, max_grad_norm) for a, d in zip(inputs, deltas, strict=True)], -1)  # [C, 5]
    new = []
    for layer in range(2):
        a = jnp.stack([x[layer] for x in inputs], axis=1)  # [C, 5, d_in]
        d = jnp.stack([x[layer] for x in deltas], axis=1)  # [C, 5, d_out]
        norm = jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6)
        values = -(alpha[:, None] * scale)[..., None] * norm * d
        gates = jnp.broadcast_to(jnp.log(alpha)[:, None], scale.shape)
        beta = jnp.broadcast_to((eta / alpha)[:, None], scale.shape)
        state = jnp.stack([running[name][layer] for name in MEMORIES])  # [5, d_in, d_out]
        keys = a / norm  # a^, as _l2
        _, final = kernels.gated_delta_rule(keys[None], keys[None], values[None], beta[None], gates[None], scale=1.0,
                                            initial_state=state[None], output_final_state=True,
                                            chunk_size=u.shape[0])
        new.append(final[0])
    return {name: (new[0][i], new[1][i]) for i, name in enumerate(MEMORIES)}, y


class SelfModifyingTitans(nnx.Module):
    """`mixer(x: [batch, seq, d_model], *, state=None, segment_ids=None) -> (y, state)`: the memory
    mixer's contract (a returned state continues the sequence; documents start on the chunk grid)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, fmt: HopeFormat, *, std: float = 0.02,
                 out_std: float = 0.02, dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        fmt.check()
        self.fmt, self.num_heads, self.head_dim, self.dtype, self.remat = fmt, num_heads, head_dim, dtype, remat
        hd = (num_heads, head_dim)
        proj = dict(axes=("embed", "heads", "kv"), std=std, dtype=dtype, rngs=rngs)
        self.u, self.q = Projection((d_model,), hd, **proj), Projection((d_model,), hd, **proj)
        self.conv = ShortConv(2 * num_heads * head_dim, fmt.conv_width, dtype=dtype, axis_name=None)
        e = fmt.expansion * head_dim
        inits = {}
        for name in MEMORIES:
            w2 = jax.random.normal(rngs.params(), (num_heads, head_dim, e)) / math.sqrt(head_dim)
            w1 = jax.random.normal(rngs.params(), (num_heads, e, head_dim)) * std
            inits[name] = nnx.List([constant_param(w2, ("heads", None, None)), constant_param(w1, ("heads", None, None))])
        self.init_state = nnx.Dict(inits)
        self.eta_readout = constant_param(std * jax.random.normal(rngs.params(), hd), ("heads", "kv"))
        self.eta_bias = constant_param(jnp.full((num_heads,), logit(fmt.lr_init / fmt.lr_max)), ("heads",))
        self.alpha_readout = constant_param(std * jax.random.normal(rngs.params(), hd), ("heads", "kv"))
        self.alpha_bias = constant_param(jnp.full((num_heads,), logit(1.0 - fmt.decay_init)), ("heads",))
        self.out_norm = constant_param(jnp.ones(hd), ("heads", "kv"))
        self.o = Projection(hd, (d_model,), axes=("heads", "kv", "embed"), std=out_std, dtype=dtype, rngs=rngs)

    def _initial(self, batch: int) -> dict:
        return {name: tuple(jnp.broadcast_to(p.value.astype(jnp.float32), (batch,) + p.value.shape) for p in layers)
                for name, layers in self.init_state.items()}

    def init_state_for(self, batch_size: int) -> SelfModState:
        w = self._initial(batch_size)
        return SelfModState(weights=w, anchor=w, pos=jnp.zeros((batch_size,), jnp.int32),
                            conv_tail=self.conv.init_tail(batch_size))

    def __call__(self, x, *, state: SelfModState | None = None, segment_ids=None):
        return run_mixer(self, x, state, segment_ids)

    def _mix(self, x, state, segment_ids):
        b, t, _ = x.shape
        c = self.fmt.chunk
        fresh = self.init_state_for(b)
        n = math.ceil(t / c) if state is None else math.ceil((c - 1 + t) / c)  # a continued call may start mid-chunk
        uq, tail = self.conv(jnp.concatenate([self.u(x), self.q(x)], axis=-1).reshape(b, t, -1),
                             segment_ids=segment_ids, tail=None if state is None else state.conv_tail)
        uq = uq.astype(jnp.float32).reshape(b, t, 2 * self.num_heads, self.head_dim)
        state = fresh if state is None else state
        offset = state.pos[0]  # every row continues the same grid (segment ids: fresh calls only)

        def grid(a, fill=0):  # [B, T, ...] -> [n, B, C, ...] at grid positions offset ...
            buf = jnp.full((b, n * c) + a.shape[2:], fill, a.dtype)
            buf = jax.lax.dynamic_update_slice_in_dim(buf, a, offset, axis=1)
            return jnp.moveaxis(buf.reshape((b, n, c) + a.shape[2:]), 1, 0)

        u, q = grid(uq[:, :, :self.num_heads]), grid(uq[:, :, self.num_heads:])  # [n, B, C, H, d]
        present = grid(jnp.ones((b, t), bool), False)
        seg = grid(jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32))
        prev = jnp.concatenate([seg[:1, :, :1], seg[:-1, :, -1:]], axis=0)[..., 0]  # [n, B]
        resets = (jnp.arange(n)[:, None] > 0) & (seg[:, :, 0] != prev) & (seg[:, :, 0] > 0)
        valid = present & (seg > 0)
        readouts = {"eta": (self.eta_readout.value, self.eta_bias.value, self.fmt.lr_max),
                     "alpha": (self.alpha_readout.value, self.alpha_bias.value)}
        update = lambda a, r, u, q, ok, ro: chunk_update(a, r, u, q, ok, ro, self.fmt.max_grad_norm)  # noqa: E731
        per_head = jax.vmap(update, in_axes=(0, 0, 1, 1, None, {"eta": (0, 0, None), "alpha": (0, 0)}),
                            out_axes=(0, 1))  # y: [C, H, d]
        per_row = jax.vmap(lambda a, r, u, q, ok: per_head(a, r, u, q, ok, readouts))
        ends = jnp.clip(offset + t - c * jnp.arange(n), 0, c)  # slots of this call in each chunk

        def body(carry, xs):
            running, anchor = carry
            u, q, ok, reset, end = xs
            running, anchor = where_leading(reset, (fresh.weights, fresh.weights), (running, anchor))
            running, y = per_row(anchor, running, u, q, ok)
            anchor = jax.tree.map(lambda r, a: jnp.where(end == c, r, a), running, anchor)  # a chunk ended
            return (running, anchor), y

        (running, anchor), y = jax.lax.scan(jax.checkpoint(body), (state.weights, state.anchor),
                                            (u, q, valid, resets, ends))
        y = jnp.moveaxis(y, 0, 1).reshape((b, n * c) + y.shape[3:])  # [B, n C, H, d]
        y = jax.lax.dynamic_slice_in_dim(y, offset, t, axis=1)
        if segment_ids is not None:  # trailing padding holds the fresh state
            keep = segment_ids[:, -1] > 0
            running, anchor = where_leading(keep, (running, anchor), (fresh.weights, fresh.weights))
        new = SelfModState(weights=running, anchor=anchor, pos=(state.pos + t) % c, conv_tail=tail)
        return self._output(y), new

    def _output(self, y):
        """`y: [B, T, H, d]` -> `[B, T, d_model]`: per-head RMSNorm (learned scale), W_O."""

        @recompute
        def normed(y):
            return (y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-6) * self.out_norm.value)

        return self.o(normed(y).astype(self.dtype))

"""The chunk-parallel (dual) form of an anchored deep memory (Titans Eq. 16-18, spec §1.6), and the
chunk algebra the memory engine shares with it.

Inside a chunk of C positions with start states (W_s, S_s), every token takes its inner gradient at
the chunk's anchor W_a, so each layer's per-token gradient is an outer product u_i = A_i^T delta_i
(A_i the layer's input at the anchor, delta_i the loss gradient at its pre-activation) that does
not depend on the writes before it in the chunk. A learner linear in the gradients gives
S_r = m_r S_s - sum_{i<=r} n[r, i] u_i; multiplicative retention (beta_r = prod_{j<=r} l_j,
D[r, j] = beta_r / beta_j) then gives

    W_r = beta_r W_s + f_r S_s - sum_i G[r, i] u_i,     f = D m,  G = D n,

and a read after write never forms W_r: layer by layer, the pre-activation of query r is
p_r = beta_r z_r W_s + f_r z_r S_s - sum_i G[r, i] (z_r . A_i) delta_i, z the previous layer's
activation (q at the first layer). Invalid positions (padding, grid slots outside a call) are exact
no-ops: no gradient, no decay, no momentum step.

The pieces (`gradient_factors`, `learner_terms`, `decayed_terms`, `dual_read`) take plain arrays and
functions, so the engine's generic chunk step (any registered objective, learner, retention) and
this op's fixed one (l2, momentum or gd, scalar decay) are the same code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from kernels.common import decay_ratios, last_entry, prefix_sum, where_leading

# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0: relative error below 1.2e-7 for every
# z (Press et al., Numerical Recipes, "erfcc"; measured here: 1.04e-7 on [0, 10]). P's coefficients,
# constant term first:
_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
                      1.48851587, -0.82215223, 0.17087277)


@jax.custom_jvp
def normal_cdf(x: jax.Array) -> jax.Array:
    """Phi(x) = erfc(-x / sqrt 2) / 2 from exp, divisions and a polynomial only: Pallas Triton
    lowers no erf or erfc and Mosaic TPU no erfc. Accurate to 1.2e-7 relative in both tails; the
    derivative is the exact density (custom JVP), so gradients of any order are the exact ones."""
    z = jnp.abs(x) * (1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = jnp.zeros_like(t)
    for c in reversed(_ERFC_COEFFICIENTS):
        poly = poly * t + c
    half_erfc = 0.5 * t * jnp.exp(poly - z * z)
    return jnp.where(x < 0, half_erfc, 1.0 - half_erfc)


@normal_cdf.defjvp
def _normal_cdf_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return normal_cdf(x), jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi)) * dx


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU without the tanh approximation, x Phi(x) (`normal_cdf`: jax.nn.gelu's erfc does not lower
    in Pallas kernels; the two agree to 1.2e-7 relative)."""
    return x * normal_cdf(x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": exact_gelu,
    "silu": jax.nn.silu,
}

Weights = tuple[jax.Array, ...]  # one [d_in, d_out] matrix per layer


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Parameter-free LayerNorm over the last axis (the Miras memory's output norm)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


def finish(out: jax.Array, z: jax.Array, residual: bool, output_norm: bool) -> jax.Array:
    """The memory's output from its last layer's `out`: LN(out) when `output_norm`, plus the input
    `z` when `residual` (Miras §1.5.1: M(z) = z + LN(W1 GELU(W2 z)))."""
    out = layer_norm(out) if output_norm else out
    return out + z if residual else out


Body = Callable[[Sequence[Callable[[jax.Array], jax.Array]], jax.Array, Callable], jax.Array]


def chain(layers: Sequence[Callable[[jax.Array], jax.Array]], z: jax.Array, activation: Callable) -> jax.Array:
    """The stack's body: p^l = layer_l(a^{l-1}), a^l = activation(p^l) between layers (none after
    the last), a^0 = z. `layers[l](x)` is x W^l (a plain product, or a dual or per-position read of
    layer l's weights); a structure's body says only how its layers connect (`mlp_forward`)."""
    a = z
    for i, layer in enumerate(layers):
        p = layer(a)
        a = activation(p) if i < len(layers) - 1 else p
    return a


def mlp_forward(weights: Weights, z: jax.Array, probes: Weights | None, activation: Callable,
                residual: bool, output_norm: bool = False, body: Body = chain) -> tuple[jax.Array, list[jax.Array]]:
    """M(z; W) for `z: [n, dk]` -> (`[n, dv]`, the input activation of every layer): the layers
    p^l = a W^l connected by `body` (`chain`: a stack with `activation` between layers), then
    `finish` (an optional LayerNorm, plus z when `residual`).
    `probes` (one `[n, d_out]` zero array per layer) are added to the pre-activations, so a loss's
    gradient w.r.t. the probes is each token's delta (Titans spec §1.3)."""
    inputs: list = [None] * len(weights)

    def layer(i: int) -> Callable[[jax.Array], jax.Array]:
        def apply(a):
            inputs[i] = a
            return a @ weights[i] if probes is None else a @ weights[i] + probes[i]
        return apply

    out = body([layer(i) for i in range(len(weights))], z, activation)
    return finish(out, z, residual, output_norm), inputs


def l2_loss(out: jax.Array, v: jax.Array) -> jax.Array:
    """||M(k_i) - v_i||^2 summed over features and tokens (Titans Eq. 12)."""
    return jnp.sum(jnp.square(out - v))


def clip_factor(max_grad_norm: float, squared_norm: jax.Array) -> jax.Array:
    """min(1, tau / ||u||) for inner gradients of squared Frobenius norm `squared_norm` (any shape);
    1 when tau = `max_grad_norm` is 0. The epsilon keeps the factor differentiable at u = 0."""
    if max_grad_norm <= 0:
        return jnp.ones_like(squared_norm)
    return jnp.minimum(1.0, max_grad_norm * jax.lax.rsqrt(squared_norm + 1e-12))


def gradient_factors(key_loss: Callable, probes: Weights, lr: jax.Array, valid: jax.Array,
                     clip: Callable | None = None) -> tuple[list[jax.Array], Weights, jax.Array]:
    """The per-token gradient factors at the anchor: u_i = A_i^T delta_i per layer.

    `key_loss(probes) -> (loss summed over the chunk's tokens, the layer inputs A_l [C, d_in])`,
    `probes`: one zero `[C, d_out]` array per layer, `lr: [C]` rho_i, `valid: [C]` bool, `clip`
    (optional) maps ||u_i||^2 `[C]` to a factor on rho_i. Returns (A_l, delta_l `[C, d_out]`, the
    effective rho `[C]`, zero at invalid positions), with ||u_i||^2 = sum_l ||A_i||^2 ||delta_i||^2."""
    _, vjp, inputs = jax.vjp(key_loss, probes, has_aux=True)
    (deltas,) = vjp(jnp.ones((), jnp.float32))
    lr = lr * valid.astype(jnp.float32)
    if clip is not None:
        lr = lr * clip(sum(jnp.sum(a * a, -1) * jnp.sum(d * d, -1) for a, d in zip(inputs, deltas, strict=True)))
    return inputs, deltas, lr


def learner_terms(lr: jax.Array, log_momentum: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(m `[C]`, n `[C, C]`) of S_r = m_r S_s - sum_i n[r, i] u_i. Momentum (Titans Eq. 13-14):
    m_r = prod_{j<=r} mu_j, n[r, i] = rho_i prod_{j=i+1..r} mu_j; plain gradient descent
    (`log_momentum` None): m = 0, n = diag(rho) (each update applied once, at its token)."""
    if log_momentum is None:
        eye = jax.lax.broadcasted_iota(jnp.int32, (lr.shape[0],) * 2, 0) == jax.lax.broadcasted_iota(
            jnp.int32, (lr.shape[0],) * 2, 1)
        return jnp.zeros_like(lr), jnp.where(eye, lr[None, :], 0.0)
    cum = prefix_sum(log_momentum)
    return jnp.exp(cum), decay_ratios(cum) * lr[None, :]


def decayed_terms(log_retention: jax.Array, m: jax.Array, n: jax.Array, valid: jax.Array, last_only: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Retention folded into the learner's terms: beta_r = prod_{j<=r} l_j and D[r, j] = beta_r /
    beta_j (log space, masked before the exp; invalid positions decay by 1), f = D (valid m),
    G = D (valid n). `log_retention: [C]` (one decay per token) or `[C, dk]` (per key channel of a
    matrix memory). Returns (beta, f, G): `[C]`, `[C]`, `[C, C]`, or `[C, dk]`, `[C, dk]`, `[C, C, dk]`;
    `last_only`: their last rows only (leading axis 1), what the chunk-end state needs: G's row is
    one [C] x [C, C] product instead of a [C, C] x [C, C] one."""
    vf = valid.astype(jnp.float32)
    log_ret = jnp.where(valid.reshape(valid.shape + (1,) * (log_retention.ndim - 1)), log_retention, 0.0)
    cum = prefix_sum(log_ret.T).T  # over positions (axis 0)
    beta = jnp.exp(cum)
    rows = (lambda x: last_entry(x, 0)[None]) if last_only else (lambda x: x)  # noqa: E731
    if log_retention.ndim == 2:  # per channel: D [C, C, dk]
        decay = rows(jnp.moveaxis(decay_ratios(cum.T), 0, -1))
        return rows(beta), jnp.einsum("rjd,j->rd", decay, vf * m), jnp.einsum("rjd,ji->rid", decay, vf[:, None] * n)
    decay = rows(decay_ratios(cum))
    return rows(beta), jnp.sum(decay * (vf * m)[None, :], axis=-1), decay @ (vf[:, None] * n)  # no matvec: Triton's dots are 2-D


def signed_channel_terms(gates: jax.Array, m: jax.Array, n: jax.Array, valid: jax.Array
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`decayed_terms` for per-key-channel factors of any sign, `gates: [C, dk]` (Lattice's GLA form:
    a_{t,i} > 1 is the normal case, a <= 0 possible, so there are no logs): beta_r = prod_{j<=r} a_j,
    D[r, j] = prod_{j<j'<=r} a_j' as a masked direct product (a cumulative product over r of the
    factors a_r where r > j, 1 elsewhere: never a division by beta_j, which may be 0), f = D (valid m),
    G = D (valid n); invalid positions factor 1. Returns (beta, f, G): `[C, dk]`, `[C, dk]`, `[C, C, dk]`."""
    vf = valid.astype(jnp.float32)
    a = jnp.where(valid[:, None], gates, 1.0)
    rows = jax.lax.broadcasted_iota(jnp.int32, (a.shape[0],) * 2, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (a.shape[0],) * 2, 1)
    factors = jnp.where((rows > cols)[:, :, None], a[:, None, :], 1.0)  # [r, j, dk]: a_r past j
    decay = jnp.where((rows >= cols)[:, :, None], jnp.cumprod(factors, axis=0), 0.0)
    return (jnp.cumprod(a, axis=0), jnp.einsum("rjd,j->rd", decay, vf * m),
            jnp.einsum("rjd,ji->rid", decay, vf[:, None] * n))


def dual_read(w_start: Weights, s_start: Weights, q: jax.Array, inputs, deltas, beta, f, big_g, m, n, *,
              activation: Callable, residual: bool, momentum: bool, output_norm: bool = False,
              transposed: bool = False, read: bool = True, body: Body = chain
              ) -> tuple[tuple[Weights, Weights], jax.Array | None]:
    """The reads and the chunk-end state without per-token weights. Returns ((W_C, S_C), Y [C, dv]);
    S_C is `s_start` unchanged when the learner carries no momentum (`momentum` False). `read`
    False: the chunk-end state only, in O(C |W|) (no C x C read matrices), and Y None.

    `beta, f, big_g`: `decayed_terms` of one decay per token (`[C]`, `[C]`, `[C, C]`), or a tuple with
    one entry per layer of its per-input-channel terms (`[C, d_in]`, `[C, d_in]`, `[C, C, d_in]`).

    `transposed` (one matrix layer, one decay per token): the reads are y_r = W_r q_r for `q: [C, dv]`
    -> Y `[C, dk]` (Trellis's value read V^T r, spec miras-lattice-trellis §3.6 step 4):
    Y = diag(beta) (Q W_s^T) + diag(f) (Q S_s^T) - [(Q Delta^T) * G] A.

    `body` connects the layers' reads as the structure's forward does (`mlp_forward`; `chain`: a stack)."""
    channel = isinstance(beta, tuple)
    m_c, n_c = last_entry(m, 0), last_entry(n, 0)  # the chunk end's coefficients
    if transposed and (channel or len(w_start) != 1 or residual or output_norm):
        raise ValueError("a transposed read needs one matrix layer with one decay per token")
    new_w, new_s, readers = [], [], []
    for layer, (ws, ss, a, d) in enumerate(zip(w_start, s_start, inputs, deltas, strict=True)):
        terms = (beta[layer], f[layer], big_g[layer]) if channel else (beta, f, big_g)
        beta_c, f_c, g_c = (last_entry(x, 0) for x in terms)
        if channel:
            new_w.append(beta_c[:, None] * ws + f_c[:, None] * ss - (a * g_c).T @ d)
        else:
            new_w.append(beta_c * ws + f_c * ss - (a * g_c[:, None]).T @ d)
        new_s.append(m_c * ss - (a * n_c[:, None]).T @ d if momentum else ss)
        readers.append(functools.partial(_dual_layer_read, ws, ss, a, d, terms, channel, transposed))
    if not read:
        return (tuple(new_w), tuple(new_s)), None
    return (tuple(new_w), tuple(new_s)), finish(body(readers, q, activation), q, residual, output_norm)


def _dual_layer_read(ws, ss, a, d, terms, channel: bool, transposed: bool, z: jax.Array) -> jax.Array:
    """Layer l's pre-activations p_r = z_r W_r at every position r without forming W_r (`dual_read`):
    `z: [C, d_in]` (`[C, dv]` -> `[C, dk]` transposed), `terms` its (beta, f, G)."""
    beta_l, f_l, g_l = terms
    if transposed:
        return beta_l[:, None] * (z @ ws.T) + f_l[:, None] * (z @ ss.T) - ((z @ d.T) * g_l) @ a
    if channel:
        return (z * beta_l) @ ws + (z * f_l) @ ss - jnp.einsum("rd,id,rid->ri", z, a, g_l) @ d
    return beta_l[:, None] * (z @ ws) + f_l[:, None] * (z @ ss) - ((z @ a.T) * g_l) @ d


def outer_sum(coefficients: jax.Array, a: jax.Array, d: jax.Array) -> jax.Array:
    """sum_i coefficients[r, i] a_i^T d_i for every r: `[R, I]`, `[I, A]`, `[I, B]` -> `[R, A, B]`,
    as one matmul (XLA:CPU runs the three-operand einsum about 2.4x slower)."""
    r, i = coefficients.shape
    left = (coefficients[:, :, None] * a[None]).transpose(0, 2, 1).reshape(r * a.shape[1], i)
    return (left @ d).reshape(r, a.shape[1], d.shape[1])


def positionwise_read(w_start: Weights, s_start: Weights, q: jax.Array, inputs, deltas, log_retention: jax.Array,
                      m: jax.Array, n: jax.Array, valid: jax.Array, *, write: Callable | None = None,
                      view: Callable | None = None, pullback: Callable | None = None,
                      write_gates: dict | None = None, channel_gates: jax.Array | None = None,
                      activation: Callable, residual: bool, output_norm: bool = False, body: Body = chain
                      ) -> tuple[tuple[Weights, Weights], jax.Array]:
    """The chunk step with the state materialised at every position (O(C^2 |W|) work and O(C |W|)
    memory per chunk), for what `dual_read`'s closed form cannot express:

    - a learner whose momentum is linear in the gradients but whose write is not,
      W_t = l_t W_{t-1} + write(S_t, gates_t) (Muon: eta_t NS_5(S_t); ATLAS §3.6 step 4; `write_gates`:
      {name: [C]}, the learner's gates at every position): (a) the momentum at every position,
      S_r = m_r S_s - sum_i n[r, i] u_i; (b) `write` on all C at once; (c) the
      decayed cumulative sum W_r = beta_r W_s + sum_{j<=r} D[r, j] write(S_j) over valid j. Without a
      write, W_r = beta_r W_s + f_r S_s - sum_i G[r, i] u_i directly (`decayed_terms`);
    - a state read through a view (`view(weights) -> weights`, one position's matrices: Moneta's
      A / ||A||_q^(q-2), Memora's per-slice softmax of log-weights; Miras §1.7): (d) each query is
      read through the view of its own position's state;
    - `pullback(weights) -> weights` (linear: a riemannian view's VJP at the anchor, Lattice): the
      cumulative update at every position, W_r - W_s, is mapped through it before the read (no
      decay: the retention of a riemannian view has no gate);
    - `channel_gates: [C, dk]` (one matrix, no write): per-token factors of any sign on the state's
      key channels (rows) in place of the retention, W_r = Diag(a_r) W_{r-1} + update_r (Lattice's
      GLA form, whose factors the caller computes at the anchor; `signed_channel_terms`).

    `log_retention: [C]` (one decay per token), or without a write a tuple of `[C, d_in]` per layer
    (one decay per input channel: a channel retention on a state with a view, Moneta's); m, n and
    `body` as in `dual_read` (n may span a halo-extended key set). Returns ((W_C, S_C), Y [C, dv])."""
    layers = list(zip(w_start, s_start, inputs, deltas, strict=True))
    if channel_gates is not None or isinstance(log_retention, tuple):  # one decay per input channel
        if write is not None or (channel_gates is not None and len(layers) != 1):
            raise ValueError("per-channel decays need no write (channel_gates: one matrix layer)")
        terms = ([signed_channel_terms(channel_gates, m, n, valid)] if channel_gates is not None else
                 [decayed_terms(part, m, n, valid) for part in log_retention])
        per_position = [beta[:, :, None] * ws[None] + f[:, :, None] * ss[None]
                        - jnp.einsum("rik,iv->rkv", big_g * a[None], d)
                        for (beta, f, big_g), (ws, ss, a, d) in zip(terms, layers, strict=True)]
        new_s = [m[-1] * ss - (a * n[-1][:, None]).T @ d for ws, ss, a, d in layers]
    elif write is None:
        beta, f, big_g = decayed_terms(log_retention, m, n, valid)
        per_position = [beta[:, None, None] * ws[None] + f[:, None, None] * ss[None] - outer_sum(big_g, a, d)
                        for ws, ss, a, d in layers]
        new_s = [m[-1] * ss - (a * n[-1][:, None]).T @ d for ws, ss, a, d in layers]
    else:
        cum = jnp.cumsum(jnp.where(valid, log_retention, 0.0))
        beta, decay = jnp.exp(cum), decay_ratios(cum) * valid.astype(jnp.float32)[None, :]
        per_position, new_s = [], []
        for ws, ss, a, d in layers:
            momenta = m[:, None, None] * ss[None] - outer_sum(n, a, d)  # (a)
            steps = jax.vmap(write)(momenta, write_gates or {})  # (b)
            summed = (decay @ steps.reshape(steps.shape[0], -1)).reshape(steps.shape)
            per_position.append(beta[:, None, None] * ws[None] + summed)  # (c)
            new_s.append(momenta[-1])
    if pullback is not None:
        pulled = jax.vmap(pullback)(tuple(p - ws[None] for p, ws in zip(per_position, w_start, strict=True)))
        per_position = [ws[None] + p for p, ws in zip(pulled, w_start, strict=True)]
    read_weights = tuple(per_position) if view is None else jax.vmap(view)(tuple(per_position))
    out = body([lambda z, w=w: jnp.einsum("ra,rab->rb", z, w) for w in read_weights], q, activation)  # (d)
    return (tuple(w[-1] for w in per_position), tuple(new_s)), finish(out, q, residual, output_norm)


def grouped_scan(body: Callable, carry, xs):
    """`lax.scan(body, carry, xs)` over n chunks with a backward pass that keeps O(sqrt n) carries:
    the chunks run in checkpointed groups of g = ceil(sqrt n), so only the carries at group
    boundaries are saved and one group's per-chunk carries are rebuilt at a time (each fast-weight
    copy is [heads, d, d]-sized, the dominant training memory of a deep memory). `body` must leave
    the carry unchanged on an all-zero input (padding chunks fill the last group)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    group = math.isqrt(n - 1) + 1 if n > 1 else 1
    chunk_body = jax.checkpoint(body)
    if group >= n:
        return jax.lax.scan(chunk_body, carry, xs)
    groups = -(-n // group)
    pad = groups * group - n
    xs = jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
                      .reshape((groups, group) + x.shape[1:]), xs)

    @jax.checkpoint
    def run_group(c, group_xs):
        return jax.lax.scan(chunk_body, c, group_xs)

    carry, ys = jax.lax.scan(run_group, carry, xs)
    return carry, jax.tree.map(lambda y: y.reshape((groups * group,) + y.shape[2:])[:n], ys)


def chunk_step(w: Weights, s: Weights, q, k, v, lr, log_retention, log_momentum, valid, *, activation: Callable,
               residual: bool, max_grad_norm: float) -> tuple[tuple[Weights, Weights], jax.Array]:
    """One chunk of one [batch, head] for the op: the l2 objective's gradient factors at the chunk's
    start weights `w` (the anchor, each step clipped to norm `max_grad_norm` when > 0), the
    learner's terms, the decays, the dual read. `q, k: [C, dk]`, `v: [C, dv]` (any float dtype;
    fp32 inside), gates `[C]` (`log_momentum` None: gd), `valid: [C]`."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    probes = tuple(jnp.zeros((k.shape[0], x.shape[1]), jnp.float32) for x in w)

    def key_loss(p):
        out, inputs = mlp_forward(w, k, p, activation, residual)
        return l2_loss(out, v), inputs

    clip = functools.partial(clip_factor, max_grad_norm) if max_grad_norm > 0 else None
    inputs, deltas, lr = gradient_factors(key_loss, probes, lr, valid, clip)
    m, n = learner_terms(lr, None if log_momentum is None else jnp.where(valid, log_momentum, 0.0))
    beta, f, big_g = decayed_terms(log_retention, m, n, valid)
    return dual_read(w, s, q, inputs, deltas, beta, f, big_g, m, n, activation=activation, residual=residual,
                     momentum=log_momentum is not None)


def chunk_grid(segment_ids: jax.Array | None, batch: int, seq: int, heads: int, chunk_size: int
               ) -> tuple[jax.Array, jax.Array]:
    """The op's chunk grid over `n = ceil(seq / C)` chunks: (`valid: [batch, n C, heads]` bool, False
    on padding (segment id 0) and on the padded tail; `resets: [batch, n C]` bool, True where a
    document starts (the id changes to a non-zero id), read at each chunk's first token)."""
    n = -(-seq // chunk_size)
    seg = jnp.ones((batch, seq), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    seg = jnp.pad(seg, [(0, 0), (0, n * chunk_size - seq)])  # the padded tail is segment 0: invalid
    valid = jnp.broadcast_to((seg > 0)[:, :, None], (batch, n * chunk_size, heads))
    prev = jnp.concatenate([seg[:, :1], seg[:, :-1]], axis=1)
    return valid, (seg != prev) & (seg > 0)


def chunk_anchored_memory(q, k, v, lr, log_retention, log_momentum, initial_weights: Weights,
                          initial_momentum: Weights | None, chunk_size: int, activation: str, residual: bool,
                          max_grad_norm: float, segment_ids: jax.Array | None
                          ) -> tuple[jax.Array, Weights, Weights | None]:
    """The op's chunk form over [batch, heads]: chunks of `chunk_size` from token 0 (a ragged tail
    is padded with invalid positions), `grouped_scan` over the chunks, `chunk_step` vmapped over
    [batch, heads]. A chunk whose first token starts a document (its id differs from the previous
    token's and is not 0) restarts from the initial states; id 0 marks padding (no-ops).

    Args (validated): `q, k: [B, T, H, dk]`, `v: [B, T, H, dv]` (any float dtype), gates
    `[B, T, H]` fp32 (`log_momentum` None: gd), per-layer states `[B, H, d_in, d_out]` fp32,
    `segment_ids: [B, T]` int or None. Returns (o `[B, T, H, dv]` fp32, W_T, S_T or None)."""
    b, t, h = q.shape[:3]
    c = chunk_size
    n = -(-t // c)
    valid, resets = chunk_grid(segment_ids, b, t, h, c)
    resets = resets[:, ::c].T  # [n, B]: a document starts at the chunk's first token

    def to_chunks(x):  # [B, T or n C, H, ...] -> [n, B, H, C, ...]
        x = jnp.pad(x, [(0, 0), (0, n * c - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape((b, n, c, h) + x.shape[3:])
        return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 2, 3)

    momentum = log_momentum is not None
    gates = (lr, log_retention) + ((log_momentum,) if momentum else ())
    xs = (tuple(to_chunks(x) for x in (q, k, v, valid) + gates), resets)
    step = functools.partial(_step_heads, momentum, ACTIVATIONS[activation], residual, max_grad_norm)
    fresh = (initial_weights, initial_momentum if momentum else ())

    def body(carry, chunk):
        (qc, kc, vc, ok, lr_c, ret_c, *mom_c), reset = chunk
        w, s = where_leading(reset, fresh, carry)
        return step(w, s, qc, kc, vc, lr_c, ret_c, mom_c[0] if momentum else None, ok)

    (w, s), ys = grouped_scan(body, fresh, xs)
    o = ys.transpose(1, 0, 3, 2, 4).reshape(b, n * c, h, ys.shape[-1])[:, :t]  # [n, B, H, C, dv] -> [B, T, H, dv]
    return o, w, (s if momentum else None)


def _step_heads(momentum, activation, residual, max_grad_norm, w, s, q, k, v, lr, log_ret, log_mom, valid):
    """`chunk_step` for every [batch, head] (leaves [B, H, ...]); (W, S) in, (W, S) and Y out."""
    def one(w, s, q, k, v, lr, log_ret, log_mom, valid):
        (w, s), y = chunk_step(w, s if momentum else tuple(jnp.zeros_like(x) for x in w), q, k, v, lr, log_ret,
                               log_mom, valid, activation=activation, residual=residual,
                               max_grad_norm=max_grad_norm)
        return (w, s if momentum else ()), y

    mom_axis = 0 if momentum else None
    per_head = jax.vmap(one, in_axes=(0, 0 if momentum else None, 0, 0, 0, 0, 0, mom_axis, 0))
    return jax.vmap(per_head, in_axes=(0, 0 if momentum else None, 0, 0, 0, 0, 0, mom_axis, 0))(
        w, s, q, k, v, lr, log_ret, log_mom, valid)

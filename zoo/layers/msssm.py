"""MS-SSM: the multi-scale state space mixer (arXiv 2512.23824; spec
msssm-polysketch-quantized-attention-pallas §1).

A Mamba-style mixer (spec §1.1.5, inferred) in which the short causal conv is replaced by a learned
multi-scale decomposition and the one selective SSM by an array of M = S + 2 diagonal SSMs, one per
scale, fused per channel by an input-dependent mixer. Per layer, with inner width D = expand * d_model:

    [x, g] = in_proj(h)                                              x, g: [batch, seq, D]
    a^0 = x;  a^s[t] = sum_l phi^s[l] a^(s-1)[t - 2^(s-1) l],
              d^s[t] = sum_l psi^s[l] a^(s-1)[t - 2^(s-1) l]         (§1.1.1, causal, s = 1..S)
    u^0 = x, u^s = d^s (s = 1..S), u^(S+1) = a^S;  u^m <- SiLU(u^m)   (§1.1.2 branch inputs, §1.6 #4/#5)
    xs = SiLU(x) (the raw signal; every selective parameter reads it, §1.1.2 "from the raw input")
    h^m_t = exp(Delta^m_t A^m) h^m_(t-1) + Bbar^m_t u^m_t,   y^m_t = C^m_t . h^m_t + D^m u^m_t   (§1.1.2)
    z_t = sum_m E_t[:, m] y^m_t,   E_t = Linear_E(xs_t) (no softmax)  (§1.1.4, eq. 4)
    out = out_proj(z * SiLU(g))

S6 ("selective"): Delta^m_t = softplus(dt_up^m(dt_down^m xs_t) + dt_bias^m) `[D]`, B^m_t, C^m_t =
Linear(xs_t) `[N]` shared over channels; S4 (LTI): Delta^m, B^m, C^m are learned constants `[D(, N)]`.
Bbar = Delta B (Euler, Mamba's code; default) or Delta B expm1(Delta A) / (Delta A) (zero-order hold).
A^m = -exp(A_log^m) stays negative; at init A^m[c, n] = -(N (M-1-m) + n + 1): the S4D-real values
split into contiguous groups of N, the coarsest scale (m = M-1) slowest (§1.1.3, the corrected
partition of Fig. 2); `a_init: mamba` gives every branch -(n+1) (the paper's Table 7 ablation).

Training form (§1.2): the conv cascade over the whole sequence (O(seq K S D)), then a `lax.scan`
over chunks of `chunk` tokens, checkpointed (the backward keeps the state at chunk boundaries and
recomputes inside), each chunk a token-by-token scan (`scan: sequential`, default: the fastest on
CPU, 1.9 s vs 5.3 s fwd + bwd for 1024 tokens at d_model 256, N = 16) or an associative scan of
(decay, input) pairs (`scan: associative`: log depth, for accelerators; not yet measured on one),
the C contraction inside: the state `[batch, M, D, N]` exists for one chunk at a time, never over
the sequence. Packed documents: conv taps never cross a document start and the
state restarts (decay 0) at each start. Decoding (§1.3): the cache holds each level's conv history
((K-1) 2^(s-1) inputs of a^(s-1)) and the SSM states; `extend` runs the same code from the cache,
so pieces, prefill and one-token decoding all equal one call.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from zoo.layers.linear import Projection
from zoo.layers.param import constant_param, normal_param

VARIANTS = ("s6", "s4")
MIXERS = ("per_channel", "shared", "depthwise")
A_INITS = ("scales", "mamba")
FILTER_INITS = ("db2", "random")
DISCRETIZATIONS = ("euler", "zoh")
SILU_PLACES = ("branches", "input")
SCANS = ("sequential", "associative")
# Daubechies-2 reconstruction filters (pywt rec_lo / rec_hi), spec §1.6 #8: taps by lag l
DB2_LOW = (0.48296291314469025, 0.836516303737469, 0.22414386804185735, -0.12940952255092145)
DB2_HIGH = (-0.12940952255092145, -0.22414386804185735, 0.836516303737469, -0.48296291314469025)


@dataclasses.dataclass(frozen=True)
class MSSSMFormat:
    """The `model.msssm` section. `variant`: s6 (selective Delta, B, C) or s4 (learned constants);
    `scales` S (M = S + 2 SSM branches); `kernel` K taps per level (dilation 2^(s-1)); `state` N per
    branch; `expand`: D = expand * d_model; `dt_rank` R of Delta's and E's low-rank maps (0 = ceil(
    d_model / 16), Mamba); `chunk`: tokens per chunk of the training scan; `mixer`: E_t per channel
    (low rank R, default), one weight per branch shared by all channels, or depthwise (§1.6 #3);
    `a_init`: the multi-scale S4D-real partition or Mamba's per-branch S4D-real; `filter_init`: the
    db2 wavelet pair (K = 4) or random taps; `discretization`: euler or zoh (§1.6 #6); `silu`: on
    each branch input (default) or on x before the decomposition (§1.6 #5); `scan`: how a chunk
    runs (the module docstring; same numbers); `dt_min` / `dt_max`: Delta's log-uniform range at
    init (§1.6 #7). `state` 4 per branch: M N = 20 per channel at S = 3, about Mamba-1's 16 (§1.6 #2:
    the total matched to the baseline SSM; the paper's own runs use 128 per branch)."""

    variant: str = dataclasses.field(default="s6", metadata={"choices": VARIANTS})
    scales: int = 3
    kernel: int = 4
    state: int = 4
    expand: int = 2
    dt_rank: int = 0
    chunk: int = 64
    mixer: str = dataclasses.field(default="per_channel", metadata={"choices": MIXERS})
    a_init: str = dataclasses.field(default="scales", metadata={"choices": A_INITS})
    filter_init: str = dataclasses.field(default="db2", metadata={"choices": FILTER_INITS})
    discretization: str = dataclasses.field(default="euler", metadata={"choices": DISCRETIZATIONS})
    silu: str = dataclasses.field(default="branches", metadata={"choices": SILU_PLACES})
    scan: str = dataclasses.field(default="sequential", metadata={"choices": SCANS})
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self):
        for name in ("scales", "kernel", "state", "expand", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank < 0:
            raise ValueError(f"dt_rank must be >= 0 (0 = ceil(d_model / 16)), got {self.dt_rank}")
        if self.filter_init == "db2" and self.kernel != 4:
            raise ValueError(f"filter_init=db2 is the 4-tap Daubechies pair: it needs kernel=4, got kernel="
                             f"{self.kernel}; set kernel: 4 or filter_init: random")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    @property
    def branches(self) -> int:
        return self.scales + 2

    def history(self, level: int) -> int:
        """Inputs of a^(level-1) that level `level` (1..S) keeps between calls: (K-1) 2^(level-1)."""
        return (self.kernel - 1) * 2 ** (level - 1)


def initial_a(spec: MSSSMFormat, channels: int) -> np.ndarray:
    """`[M, D, N]` negative eigenvalues at init (§1.1.3): branch m gets -(N (M-1-m) + n + 1) ("scales")
    or -(n + 1) for every branch ("mamba")."""
    m, n = spec.branches, spec.state
    offset = np.arange(m - 1, -1, -1) * n if spec.a_init == "scales" else np.zeros(m)
    a = -(offset[:, None] + np.arange(n)[None, :] + 1.0)  # [M, N]
    return np.broadcast_to(a[:, None, :], (m, channels, n)).astype(np.float32)


def _inverse_softplus(y: jax.Array) -> jax.Array:
    return y + jnp.log(-jnp.expm1(-y))


@struct.dataclass
class MSSSMCache:
    """Decoding state per layer: `history[s-1]: [batch, (K-1) 2^(s-1), D]` the last inputs of level s
    (raw a^(s-1)), `state: [batch, M, D, N]` float32 SSM states."""

    history: tuple
    state: jax.Array


class MSSSM(nnx.Module):
    """`x: [batch, seq, d_model] -> [batch, seq, d_model]`, the causal MS-SSM mixer (module docstring)."""

    def __init__(self, d_model: int, *, spec: MSSSMFormat, std: float, out_std: float, dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.spec, self.dtype = spec, dtype
        d, m, n, k = spec.expand * d_model, spec.branches, spec.state, spec.kernel
        r = spec.dt_rank or math.ceil(d_model / 16)
        self.inner = d
        self.in_proj = Projection((d_model,), (2, d), axes=("embed", None, "mlp"), std=std, dtype=dtype, rngs=rngs)
        self.out_proj = Projection((d,), (d_model,), axes=("mlp", "embed"), std=out_std, dtype=dtype, rngs=rngs)
        if spec.filter_init == "db2":
            low = jnp.broadcast_to(jnp.asarray(DB2_LOW)[None, :, None], (spec.scales, k, d))
            high = jnp.broadcast_to(jnp.asarray(DB2_HIGH)[None, :, None], (spec.scales, k, d))
            self.low, self.high = constant_param(low, (None, "conv", "mlp")), constant_param(high, (None, "conv", "mlp"))
        else:
            self.low = normal_param(rngs, (spec.scales, k, d), (None, "conv", "mlp"), k ** -0.5)
            self.high = normal_param(rngs, (spec.scales, k, d), (None, "conv", "mlp"), k ** -0.5)
        self.a_log = constant_param(np.log(-initial_a(spec, d)), (None, "mlp", None))
        self.skip = constant_param(jnp.ones((m, d)), (None, "mlp"))
        dt = jnp.exp(jax.random.uniform(rngs.params(), (m, d), minval=math.log(spec.dt_min),
                                        maxval=math.log(spec.dt_max)))
        self.dt_bias = constant_param(_inverse_softplus(dt), (None, "mlp"))
        if spec.variant == "s6":
            self.dt_down = normal_param(rngs, (d, m, r), ("mlp", None, None), d ** -0.5)
            self.dt_up = normal_param(rngs, (m, r, d), (None, None, "mlp"), r ** -0.5)
            self.bc_proj = normal_param(rngs, (d, m, 2, n), ("mlp", None, None, None), d ** -0.5)
        else:  # S4D-style constants: B = 1, C ~ N(0, 1/N) per channel
            self.b_const = constant_param(jnp.ones((m, d, n)), (None, "mlp", None))
            self.c_const = normal_param(rngs, (m, d, n), (None, "mlp", None), n ** -0.5)
        if spec.mixer == "per_channel":  # E_t = reshape(W_up (W_down xs_t), (D, M)) + 1/M
            self.e_down = normal_param(rngs, (d, r), ("mlp", None), d ** -0.5)
            self.e_up = constant_param(jnp.zeros((r, d, m)), (None, "mlp", None))
        elif spec.mixer == "shared":  # E_t = W xs_t + 1/M, one weight per branch for every channel
            self.e_shared = constant_param(jnp.zeros((d, m)), ("mlp", None))
        else:  # depthwise: E_t[c] = w_c xs_t[c] + 1/M
            self.e_depthwise = constant_param(jnp.zeros((d, m)), ("mlp", None))
        self.e_bias = constant_param(jnp.full((d, m), 1.0 / m), ("mlp", None))

    # -- pieces --------------------------------------------------------------------------------------

    def _decompose(self, x: jax.Array, history: tuple, segment_ids: jax.Array | None):
        """The causal cascade (§1.1.1). `x: [b, t, D]` float32 -> (`u: [b, t, M, D]` the branch inputs
        x, d^1..d^S, a^S before SiLU; the new history). With `segment_ids` (a fresh call) a tap reaching
        before its token's document start reads zero, as if each document stood alone."""
        b, t, _ = x.shape
        a, details, new_history = x, [], []
        for s in range(1, self.spec.scales + 1):
            dil, hist = 2 ** (s - 1), self.spec.history(s)
            ap = jnp.concatenate([history[s - 1].astype(jnp.float32), a], axis=1)  # [b, hist + t, D]
            new_history.append(ap[:, ap.shape[1] - hist:])
            segp = None if segment_ids is None else jnp.concatenate(
                [jnp.full((b, hist), -1, segment_ids.dtype), segment_ids], axis=1)
            low = high = 0.0
            for lag in range(self.spec.kernel):
                lo = hist - lag * dil
                tap = ap[:, lo:lo + t]  # a^(s-1)[t - lag dil]
                if segp is not None:
                    tap = jnp.where((segp[:, lo:lo + t] == segment_ids)[..., None], tap, 0.0)
                low = low + self.low.value[s - 1, lag] * tap
                high = high + self.high.value[s - 1, lag] * tap
            a = low
            details.append(high)
        return jnp.stack([x] + details + [a], axis=2), tuple(new_history)

    def _selective(self, xs: jax.Array):
        """`xs: [b, t, D]` -> Delta `[b, t, M, D]`, B, C `[b, t, M, N]` (S6) or `[M, D, N]` constants (S4)."""
        if self.spec.variant == "s6":
            low_rank = jnp.einsum("btd,dmr->btmr", xs, self.dt_down.value)
            delta = jax.nn.softplus(jnp.einsum("btmr,mrd->btmd", low_rank, self.dt_up.value) + self.dt_bias.value)
            bc = jnp.einsum("btd,dmkn->btmkn", xs, self.bc_proj.value)
            return delta, bc[:, :, :, 0], bc[:, :, :, 1]
        delta = jnp.broadcast_to(jax.nn.softplus(self.dt_bias.value), xs.shape[:2] + self.dt_bias.value.shape)
        return delta, self.b_const.value, self.c_const.value

    def _mixer_weights(self, xs: jax.Array) -> jax.Array:
        """E_t `[b, t, D, M]` (§1.1.4: linear in xs, no normalisation)."""
        if self.spec.mixer == "per_channel":
            e = jnp.einsum("btr,rdm->btdm", xs @ self.e_down.value, self.e_up.value)
        elif self.spec.mixer == "shared":
            e = (xs @ self.e_shared.value)[:, :, None, :]
        else:
            e = xs[..., None] * self.e_depthwise.value
        return e + self.e_bias.value

    def _scan(self, u, delta, b_in, c_out, starts, state):
        """The SSM array over the sequence in chunks (§1.2.3). `u, delta: [b, t, M, D]`; `b_in, c_out:
        [b, t, M, N]` (S6) or `[M, D, N]` (S4); `starts: [b, t]` document starts (state restarts) or
        None; `state: [b, M, D, N]`. Returns (`y: [b, t, M, D]` without the skip, the final state)."""
        b, t = u.shape[:2]
        chunk = min(self.spec.chunk, t)
        n = -(-t // chunk)
        pad = n * chunk - t
        selective = self.spec.variant == "s6"
        a = -jnp.exp(self.a_log.value)  # [M, D, N]
        zoh = self.spec.discretization == "zoh"

        def chunks(v, fill=0.0):  # [b, t, ...] -> [n, b, chunk, ...]
            v = jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2), constant_values=fill)
            return jnp.moveaxis(v.reshape((b, n, chunk) + v.shape[2:]), 1, 0)

        if starts is None:
            starts = jnp.zeros((b, t), bool)
        xs = dict(u=chunks(u), delta=chunks(delta), starts=chunks(starts), valid=chunks(jnp.ones((b, t), bool)))
        if selective:
            xs.update(b_in=chunks(b_in), c_out=chunks(c_out))

        def discretise(cx):
            """(decay, input) of the tokens in `cx` (leading dims `[b, ...]`): `[b, ..., M, D, N]`."""
            dta = cx["delta"][..., None] * a
            scale = jnp.expm1(dta) / a if zoh else cx["delta"][..., None]  # Bbar / B (ZOH: Delta expm1(.)/(.))
            inp = scale * (cx["b_in"][..., None, :] if selective else b_in) * cx["u"][..., None]
            decay = jnp.where(cx["starts"][..., None, None, None], 0.0, jnp.exp(dta))
            return jnp.where(cx["valid"][..., None, None, None], decay, 1.0), inp  # padding keeps the state

        def read_out(hs, cx):  # y = C . h over the state axis
            return jnp.sum(hs * (cx["c_out"][..., None, :] if selective else c_out), axis=-1)

        def one_chunk(h, cx):
            if self.spec.scan == "associative":  # log-depth over the chunk: [b, c, M, D, N] at once
                decay, inp = discretise(cx)
                cum_decay, cum_inp = jax.lax.associative_scan(
                    lambda p, q: (p[0] * q[0], q[0] * p[1] + q[1]), (decay, inp), axis=1)
                hs = cum_decay * h[:, None] + cum_inp
                return hs[:, -1], read_out(hs, cx)

            def one_token(h, tx):  # sequential: one [b, M, D, N] state at a time
                decay, inp = discretise(tx)
                h = decay * h + inp
                return h, read_out(h, tx)

            h, y = jax.lax.scan(one_token, h, jax.tree.map(lambda v: jnp.moveaxis(v, 1, 0), cx))
            return h, jnp.moveaxis(y, 0, 1)

        state, y = jax.lax.scan(jax.checkpoint(one_chunk), state, xs)
        return jnp.moveaxis(y, 0, 1).reshape((b, n * chunk) + u.shape[2:])[:, :t], state

    def _run(self, h: jax.Array, cache: MSSSMCache, segment_ids: jax.Array | None):
        x, g = jnp.moveaxis(self.in_proj(h), -2, 0)  # [b, t, D] each
        x = x.astype(jnp.float32)
        xs = jax.nn.silu(x)
        u, history = self._decompose(xs if self.spec.silu == "input" else x, cache.history, segment_ids)
        if self.spec.silu == "branches":
            u = jax.nn.silu(u)
        delta, b_in, c_out = self._selective(xs)
        starts = None if segment_ids is None else jnp.concatenate(
            [jnp.zeros_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
        y, state = self._scan(u, delta, b_in, c_out, starts, cache.state)
        y = y + self.skip.value * u
        z = jnp.einsum("btdm,btmd->btd", self._mixer_weights(xs), y)
        out = self.out_proj((z * jax.nn.silu(g.astype(jnp.float32))).astype(self.dtype))
        return out, MSSSMCache(history, state)

    # -- the block contract --------------------------------------------------------------------------

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """The whole sequence `x: [batch, seq, d_model]`; packed documents never see each other."""
        return self._run(x, self.init_cache(x.shape[0], x.shape[1]), segment_ids)[0]

    def init_cache(self, batch_size: int, max_len: int) -> MSSSMCache:
        """Zero conv histories and SSM states (constant size: `max_len` is not used)."""
        del max_len
        history = tuple(jnp.zeros((batch_size, self.spec.history(s), self.inner), jnp.float32)
                        for s in range(1, self.spec.scales + 1))
        return MSSSMCache(history, jnp.zeros((batch_size, self.spec.branches, self.inner, self.spec.state),
                                             jnp.float32))

    def extend(self, x: jax.Array, cache: MSSSMCache) -> tuple[jax.Array, MSSSMCache]:
        """Continues the sequence from `cache` (`x: [batch, seq, d_model]`, any seq >= 1)."""
        return self._run(x, cache, None)

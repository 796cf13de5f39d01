"""The memory mixer: turns x into q, k, v and gates, runs the engine per head, gates the output.

Input path (Titans §4.4, spec §1.1): q, k, v projections (q and k of `key_dim` per head when the
config sets it: Lattice's m-dim latent codes; head_dim otherwise) -> causal depthwise conv (width 4)
-> feature map (SiLU by default) -> L2-normalised q and k per head. Gates per head and token
from x (spec §1.4), one `GateHead` for each gate the spec reads (`MemorySpec.gate_names`), each
bias set from the config's initial value (docs/fidelity.md):
    rho_t = lr_max * sigmoid(z_lr)                  "lr": inner learning rate (Titans theta_t)
    log l_t = -softplus(z_forget)                   "log_retention": l = 1 - alpha_t ("sigmoid"), or
    log l_t = -exp(A) * softplus(z_forget)          the Mamba-2 / Gated DeltaNet form ("mamba2")
    log mu_t = -softplus(-z_momentum)               "log_momentum": momentum decay (Titans eta_t)
The retention gate's shape and form are the retention's (one per head or per key channel); every
other gate is a registered `parts.Gate` (zoo/memory/learners.py registers "lr" and "log_momentum").
Output (spec §1.5): (RMSNorm_head(y) * SiLU(x W_G + b_G)) W_O.
The memory never sees x; every outer parameter (projections, conv, gates, W_0) learns through
the inner updates (full second-order gradients unless spec.bilevel = "first_order").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx, struct

from zoo.layers import GateHead, Projection, ShortConv, constant_param, logit
from zoo.layers.recompute import recompute
from zoo.memory import engine, parts
from zoo.memory.engine import Gates
from zoo.memory.retention import channel_width
from zoo.memory.spec import MemorySpec
from zoo.memory.state import MemState
from zoo.memory.structures import init_weights, layer_shapes

if TYPE_CHECKING:  # zoo.memory never imports zoo.config at run time (the config imports the parts)
    from zoo.config import MemoryConfig

# Gated DeltaNet's decay init (FLA's GDN layer, after Mamba-2): A ~ U(0, 16) and dt ~ log-uniform
# [1e-3, 1e-1] (floored at 1e-4) per head, log l_t = -A * softplus(z_t + softplus^-1(dt)).
MAMBA2_A_RANGE = (1e-4, 16.0)
MAMBA2_DT_RANGE = (1e-3, 1e-1)
MAMBA2_DT_FLOOR = 1e-4


@struct.dataclass
class MixerState:
    """memory: MemState with leading axes [batch, heads]; conv_tail: [batch, K-1, heads * (2 qk_dim + dim)]."""

    memory: MemState
    conv_tail: jax.Array


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _mamba2_dt_bias(rngs: nnx.Rngs, num_heads: int) -> jax.Array:
    """softplus^-1(dt) with dt log-uniform in MAMBA2_DT_RANGE, one per head."""
    lo, hi = math.log(MAMBA2_DT_RANGE[0]), math.log(MAMBA2_DT_RANGE[1])
    dt = jnp.maximum(jnp.exp(jax.random.uniform(rngs.params(), (num_heads,), minval=lo, maxval=hi)), MAMBA2_DT_FLOOR)
    return dt + jnp.log(-jnp.expm1(-dt))


def run_mixer(mixer: nnx.Module, x: jax.Array, state, segment_ids: jax.Array | None):
    """A memory mixer's call, shared by every mixer with a `_mix(x, state, segment_ids)` and a `remat`
    flag: checks `x: [batch, seq, d_model]` and that segment ids come only with a fresh sequence, then
    runs `_mix`, recomputed in the backward pass when `mixer.remat` (model.remat = "memory")."""
    if x.ndim != 3:
        raise ValueError(f"the {type(mixer).__name__} takes x: [batch, seq, d_model], got shape {x.shape}")
    if segment_ids is not None and state is not None:
        raise ValueError("segment_ids are for fresh sequences; a carried state continues one sequence")
    if mixer.remat and state is None:
        return nnx.remat(lambda m, x, seg: m._mix(x, None, seg))(mixer, x, segment_ids)
    return mixer._mix(x, state, segment_ids)


class AssociativeMemory(nnx.Module):
    """One memory's own parameters and how it runs: a gate head for each gate its spec reads
    (`MemorySpec.gate_names`), the retention gate's decay rate (Mamba-2 form) and the learned
    initial state W_0 (`init_state`, per head). The mixer owns the input and output paths; TNT
    (zoo.memory.tnt) owns several of these behind one input path.

    `gates(x: [B, T, d_model])` -> {name: [B, H, T, ...]}; `fresh_state(batch)`;
    `run(state, q, k, v, gates, segment_ids)` -> (state, y [B, H, T, dv]).
    """

    def __init__(self, d_model: int, num_heads: int, key_dim: int, head_dim: int, spec: MemorySpec,
                 cfg: MemoryConfig, *, std: float = 0.02, rngs: nnx.Rngs):
        self._init_memory(d_model, num_heads, key_dim, head_dim, spec, cfg, std=std, rngs=rngs)

    def _init_memory(self, d_model, num_heads, key_dim, head_dim, spec, cfg, *, std, rngs):
        """Sets spec, memory_cfg, gate_heads, decay_rate and init_state (keys of `key_dim` after the
        feature map, values of `head_dim`)."""
        self.spec = spec
        self.memory_cfg = cfg  # the gates' forms read their settings (lr_max, ...) from it
        gate = dict(std=std, rngs=rngs, rank=cfg.gate_rank)  # full-rank (0) or D -> r -> gates
        heads = {}
        for name in spec.gate_names:
            if name != "log_retention":
                width = parts.gate(name).width
                shape, axes = ((num_heads,), ("heads",)) if width is None else ((num_heads, width(spec)), ("heads", None))
                heads[name] = GateHead(d_model, shape, axes=axes, bias_init=parts.gate(name).bias(cfg), **gate)
        decay_rate = None
        retention_gate = parts.retention(spec.retention).gate
        if retention_gate != "none":
            channel = retention_gate == "channel"  # one decay per input channel of each layer
            shape, axes = (((num_heads, channel_width(layer_shapes(spec, key_dim, head_dim))), ("heads", None))
                           if channel else ((num_heads,), ("heads",)))
            if cfg.retention_gate == "mamba2":
                bias = _mamba2_dt_bias(rngs, num_heads)
                bias = jnp.broadcast_to(bias[:, None], shape) if channel else bias
                a = jax.random.uniform(rngs.params(), (num_heads,), minval=MAMBA2_A_RANGE[0], maxval=MAMBA2_A_RANGE[1])
                decay_rate = constant_param(jnp.log(a), ("heads",))  # log A
            else:
                bias = logit(cfg.forget_init)
            heads["log_retention"] = GateHead(d_model, shape, axes=axes, bias_init=bias, **gate)
        self.gate_heads, self.decay_rate = nnx.Dict(heads), decay_rate
        keys = jax.random.split(rngs.params(), num_heads)
        per_head = [init_weights(spec, key, key_dim, head_dim, first_layer_std=cfg.mlp_first_layer_std,
                                 last_layer_std=cfg.last_layer_std)
                    for key in keys]
        self.init_state = nnx.List([
            constant_param(jnp.stack([w[i] for w in per_head]), ("heads", None, None))
            for i in range(len(layer_shapes(spec, key_dim, head_dim)))])

    def _initial_weights(self) -> tuple[jax.Array, ...]:
        """The state every document starts from, per head: W_0 (the learned `init_state`, each
        [heads, d_in, d_out]), or the state whose view is W_0 (`engine.state_of_weights`)."""
        w0 = tuple(p.value for p in self.init_state)
        return jax.vmap(lambda w: engine.state_of_weights(self.spec, w))(w0)

    def fresh_state(self, batch_size: int) -> MemState:
        """The state of every [batch, head] before any token (leaves [B, H, ...])."""
        return engine.initial_heads(self.spec, self._initial_weights(), batch_size)

    def gates(self, x) -> Gates:
        """The spec's gates {name: [B, H, T]} (channel retention: [B, H, T, sum of the layers' input
        widths]), float32, recomputed in the backward pass from x."""
        return recompute(self._gates)(x)

    def _gates(self, x) -> Gates:
        gates = {}
        for name, head in self.gate_heads.items():
            z = head(x)
            if name != "log_retention":
                gates[name] = parts.gate(name).value(z, self.memory_cfg)
            elif self.decay_rate is not None:  # Mamba-2 / GDN: -A softplus(z + dt_bias), A per head
                rate = jnp.exp(self.decay_rate.value)
                gates[name] = -jax.nn.softplus(z) * (rate[:, None] if z.ndim == 4 else rate)
            else:
                gates[name] = -jax.nn.softplus(z)
        return {name: jnp.moveaxis(g, 2, 1) for name, g in gates.items()}  # [B, T, H, ...] -> [B, H, T, ...]

    def run(self, state: MemState | None, q, k, v, g: Gates, segment_ids=None) -> tuple[MemState, jax.Array]:
        """Writes and reads `q, k: [B, H, T, dk]`, `v: [B, H, T, dv]` from `state` (None: a fresh
        sequence from W_0): one token continuing a state is one `engine.decode_step` per [batch,
        head] (O(1) in the chunk size), anything else one `engine.chunk_heads` call."""
        if state is not None and q.shape[2] == 1:
            return decode_heads(self.spec, state, q, k, v, g)
        return engine.chunk_heads(self.spec, state, q, k, v, g, init=self._initial_weights(), segment_ids=segment_ids)


def decode_heads(spec: MemorySpec, state: MemState, q, k, v, g: Gates) -> tuple[MemState, jax.Array]:
    """One token for every [batch, head] (`q, k: [B, H, 1, dk]`, state leaves [B, H, ...]) through
    `engine.decode_step`. Returns (state, y [B, H, 1, dv])."""
    def one(st, q, k, v, g):
        st, y = engine.decode_step(spec, st, q[0], k[0], v[0], engine.gates_at(g, 0))
        return st, y[None]

    q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
    return jax.vmap(jax.vmap(one))(state, q, k, v, g)


class MemoryMixer(AssociativeMemory):
    """`mixer(x: [batch, seq, d_model], *, state=None, segment_ids=None) -> (y, state)`.

    Pass the returned state back to continue a sequence (prefill, streaming, decoding all use
    it); `segment_ids: [batch, seq]` (fresh calls only) resets the memory to W_0 at every
    document start; in the chunk-parallel form documents must start at multiples of the chunk
    size (pack with data.align_documents = chunk_size).
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int, cfg: MemoryConfig, *, std: float = 0.02,
                 out_std: float = 0.02, dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        self._init_inputs(d_model, num_heads, head_dim, cfg, std=std, dtype=dtype, rngs=rngs)
        self.remat = remat  # recompute the whole mixer in the backward pass (model.remat = "memory")
        self._init_memory(d_model, num_heads, self.key_dim, head_dim, MemorySpec.of(cfg), cfg, std=std, rngs=rngs)
        self._init_output(d_model, num_heads, head_dim, cfg, std=std, out_std=out_std, dtype=dtype, rngs=rngs)

    def _init_inputs(self, d_model, num_heads, head_dim, cfg, *, std, dtype, rngs):
        """The input path: q, k, v projections, the short conv, the feature map (and its learned
        coefficients); sets `key_dim`, the size of the keys the memory sees."""
        self.num_heads, self.head_dim, self.dtype = num_heads, head_dim, dtype
        self.feature_map = parts.feature_map(cfg.qk_activation)
        self.qk_dim = cfg.key_dim or head_dim  # q and k per head (Lattice: m-dim latent codes)
        self.key_dim = self.feature_map.out_dim(self.qk_dim)  # the memory maps keys of key_dim to values of head_dim
        coefficients = jnp.log(jnp.expm1(jnp.asarray(self.feature_map.coefficients, jnp.float32)))  # softplus^-1
        self.feature_coefficients = (constant_param(jnp.tile(coefficients, (num_heads, 1)), ("heads", None))
                                     if self.feature_map.coefficients else None)  # [heads, n]: the map's a_i
        proj = dict(axes=("embed", "heads", "kv"), std=std, dtype=dtype, rngs=rngs)
        qk = (num_heads, self.qk_dim)
        self.q, self.k, self.v = Projection((d_model,), qk, **proj), Projection((d_model,), qk, **proj), \
            Projection((d_model,), (num_heads, head_dim), **proj)
        self.conv = ShortConv(num_heads * (2 * self.qk_dim + head_dim), cfg.conv_width, dtype=dtype, axis_name=None)

    def _init_output(self, d_model, num_heads, head_dim, cfg, *, std, out_std, dtype, rngs):
        """The output path: per-head RMSNorm scale, the SiLU output gate, W_O."""
        hd = (num_heads, head_dim)
        self.out_norm = constant_param(jnp.ones(hd), ("heads", "kv"))
        self.out_gate = GateHead(d_model, hd, axes=("heads", "kv"), bias_init=cfg.output_gate_bias, dtype=dtype,
                                 std=std, rngs=rngs)
        self.o = Projection(hd, (d_model,), axes=("heads", "kv", "embed"), std=out_std, dtype=dtype, rngs=rngs)

    # -- pieces ----------------------------------------------------------------------------

    def queries_keys_values(self, x, *, segment_ids=None, conv_tail=None):
        """`x: [B, T, d_model]` -> q, k `[B, H, T, key_dim]`, v `[B, H, T, dh]` in the compute dtype (the engine computes
        in float32 inside each chunk) and the new conv tail. Only the projections' output is kept
        for the backward pass: the conv, activations and normalisation are recomputed."""
        b, t, _ = x.shape
        qkv = jnp.concatenate([self.q(x), self.k(x), self.v(x)], axis=-1).reshape(b, t, -1)

        @recompute
        def features(qkv, conv_tail, segment_ids):  # arrays in, not closed over (zoo.layers.recompute)
            qkv, tail = self.conv(qkv, segment_ids=segment_ids, tail=conv_tail)
            q, k, v = jnp.split(qkv.astype(jnp.float32).reshape(b, t, self.num_heads, 2 * self.qk_dim + self.head_dim),
                                [self.qk_dim, 2 * self.qk_dim], axis=-1)
            coefficients = None if self.feature_coefficients is None else self.feature_coefficients.value
            q, k = self.feature_map(q, coefficients), self.feature_map(k, coefficients)  # [B, T, H, key_dim]
            to_heads = lambda a: jnp.moveaxis(a, 2, 1).astype(self.dtype)  # noqa: E731  [B, T, H, d] -> [B, H, T, d]
            return to_heads(_l2_normalize(q)), to_heads(_l2_normalize(k)), to_heads(jax.nn.silu(v)), tail

        return features(qkv, conv_tail, segment_ids)

    def output(self, x, y):
        """`y: [B, H, T, dh]` -> `[B, T, d_model]`: per-head RMSNorm, SiLU output gate, W_O (the
        normalisation and gate are recomputed in the backward pass)."""

        @recompute
        def gated(y, gate):
            y = jnp.moveaxis(y, 1, 2).astype(jnp.float32)
            y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-6) * self.out_norm.value
            return (y * jax.nn.silu(gate + self.out_gate.bias.value)).astype(self.dtype)

        return self.o(gated(y.astype(self.dtype), self.out_gate.proj(x)))

    # -- the mixer ---------------------------------------------------------------------------

    def memories(self) -> list[AssociativeMemory]:
        """The memories behind this mixer's input path (one; TNT's global and locals)."""
        return [self]

    def init_state_for(self, batch_size: int) -> MixerState:
        return MixerState(memory=self.fresh_state(batch_size), conv_tail=self.conv.init_tail(batch_size))

    def __call__(self, x: jax.Array, *, state: MixerState | None = None,
                 segment_ids: jax.Array | None = None) -> tuple[jax.Array, MixerState]:
        return run_mixer(self, x, state, segment_ids)

    def _mix(self, x, state, segment_ids):
        q, k, v, tail = self.queries_keys_values(
            x, segment_ids=segment_ids, conv_tail=None if state is None else state.conv_tail)
        memory, y = self.run(None if state is None else state.memory, q, k, v, self.gates(x), segment_ids)
        return self.output(x, y), MixerState(memory=memory, conv_tail=tail)

"""The Trellis mixer (arXiv 2512.23852, Fig. 1; spec miras-lattice-trellis §3.5): x -> q, k, v, alpha,
beta -> the two-pass memory (zoo.memory.trellis) -> o = W_o(Norm(y) * GELU(W_g x)).

Input path: q, k, v projections `[H, d]`, a causal depthwise conv (width `conv_width`, T6: 4) on q and
k only, no feature map and no L2 normalisation (the published equations use raw keys, §3.2); the write
target alpha_t = W_alpha x_t in R^m per head (a plain linear map, §3.2); the forget gate
beta_t = sigmoid(.) per head and token (log beta = -softplus(x w + b), b set so beta starts at
1 - forget_init = 0.99, T4); the inner step gamma = softplus(c) learned per head (starts at step_init
= 1e-2, T4; broadcast to every token as the engine's "lr" gate). K_0, V_0 are learned per head,
N(0, 1/d) (spec §3.8: non-zero). Output: Norm = per-head RMSNorm with a learned scale (T5: affine),
times GELU(W_g x), then W_o.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx, struct

from zoo.layers import GateHead, Projection, ShortConv, constant_param, logit
from zoo.layers.param import normal_param
from zoo.memory.layer import run_mixer
from zoo.memory.spec import MemorySpec
from zoo.memory.trellis import TrellisMemory, initial_memory, two_pass

if TYPE_CHECKING:
    from zoo.config import MemoryConfig


@struct.dataclass
class TrellisState:
    """memory: both memories (leaves [B, H, ...]); conv_tail: [B, K-1, 2 * heads * head_dim] (q and k)."""

    memory: TrellisMemory
    conv_tail: jax.Array


class TrellisMixer(nnx.Module):
    """`mixer(x: [batch, seq, d_model], *, state=None, segment_ids=None) -> (y [batch, seq, d_model], state)`.

    Pass the returned state back to continue a sequence; `segment_ids: [batch, seq]` (fresh calls only)
    resets both memories to (K_0, V_0) at every document start (documents on the chunk grid)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, cfg: MemoryConfig, *, std: float = 0.02,
                 out_std: float = 0.02, dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        self.spec = MemorySpec.of(cfg)
        self.num_heads, self.head_dim, self.slots = num_heads, head_dim, cfg.slots or head_dim
        self.slot_map, self.dtype, self.remat = cfg.slot_map, dtype, remat
        hd = (num_heads, head_dim)
        proj = dict(axes=("embed", "heads", "kv"), std=std, dtype=dtype, rngs=rngs)
        self.q, self.k, self.v = (Projection((d_model,), hd, **proj) for _ in range(3))
        self.alpha = Projection((d_model,), (num_heads, self.slots), axes=("embed", "heads", None), std=std,
                                dtype=dtype, rngs=rngs)
        self.conv = ShortConv(2 * num_heads * head_dim, cfg.conv_width, dtype=dtype, axis_name=None)
        self.beta = GateHead(d_model, (num_heads,), axes=("heads",), bias_init=logit(cfg.forget_init), std=std,
                             rngs=rngs)
        self.gamma = constant_param(jnp.full((num_heads,), math.log(math.expm1(cfg.step_init))), ("heads",))
        init = dict(shape=(num_heads, head_dim, self.slots), axes=("heads", None, None), std=1.0 / math.sqrt(head_dim))
        self.init_key, self.init_value = normal_param(rngs, **init), normal_param(rngs, **init)  # K_0^T, V_0^T
        self.out_norm = constant_param(jnp.ones(hd), ("heads", "kv"))
        self.gate = Projection((d_model,), hd, **proj)
        self.o = Projection(hd, (d_model,), axes=("heads", "kv", "embed"), std=out_std, dtype=dtype, rngs=rngs)

    def init_state_for(self, batch_size: int) -> TrellisState:
        return TrellisState(memory=initial_memory(self.spec, self.init_key.value, self.init_value.value, batch_size),
                            conv_tail=self.conv.init_tail(batch_size))

    def inputs(self, x, *, segment_ids=None, conv_tail=None):
        """`x: [B, T, d_model]` -> q, k, v `[B, H, T, d]`, alpha `[B, H, T, m]`, log beta and gamma
        `[B, H, T]` (float32 gates) and the new conv tail."""
        b, t, _ = x.shape
        qk, tail = self.conv(jnp.concatenate([self.q(x), self.k(x)], axis=-1).reshape(b, t, -1),
                             segment_ids=segment_ids, tail=conv_tail)
        q, k = jnp.split(qk.reshape(b, t, self.num_heads, 2 * self.head_dim), 2, axis=-1)
        heads = lambda a: jnp.moveaxis(a, 2, 1)  # noqa: E731  [B, T, H, ...] -> [B, H, T, ...]
        log_beta = -jax.nn.softplus(self.beta(x))  # [B, T, H]
        gamma = jnp.broadcast_to(jax.nn.softplus(self.gamma.value), log_beta.shape)
        return heads(q), heads(k), heads(self.v(x)), heads(self.alpha(x)), heads(log_beta), heads(gamma), tail

    def output(self, x, y):
        """`y: [B, H, T, d]` -> `[B, T, d_model]`: W_o(RMSNorm_head(y) * GELU(W_g x)) (spec §3.5)."""
        y = jnp.moveaxis(y, 1, 2).astype(jnp.float32)
        y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-6) * self.out_norm.value
        gate = jax.nn.gelu(self.gate(x).astype(jnp.float32), approximate=False)
        return self.o((y * gate).astype(self.dtype))

    def __call__(self, x: jax.Array, *, state: TrellisState | None = None,
                 segment_ids: jax.Array | None = None) -> tuple[jax.Array, TrellisState]:
        return run_mixer(self, x, state, segment_ids)

    def _mix(self, x, state, segment_ids):
        q, k, v, alpha, log_beta, gamma, tail = self.inputs(
            x, segment_ids=segment_ids, conv_tail=None if state is None else state.conv_tail)
        memory, y = two_pass(self.spec, None if state is None else state.memory, q, k, v, alpha, log_beta, gamma,
                             init_key=self.init_key.value, init_value=self.init_value.value,
                             slot_map=self.slot_map, segment_ids=segment_ids)
        return self.output(x, y), TrellisState(memory=memory, conv_tail=tail)

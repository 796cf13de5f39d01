"""Trellis (arXiv 2512.23852; spec miras-lattice-trellis §3): a fixed-size memory of m slots per head
written by a two-pass recurrent compression, on the shared memory engine.

Per head, a key memory K and a value memory V (each m x d; in the engine's orientation the matrices
W_K = K^T, W_V = V^T: [d, m]) take one online-gradient step with a forget gate on the compression loss
1/2 ||phi(M w) - alpha||^2 (zoo.memory.compression, spec §3.3):

    z_t = M_{t-1} w_t,   u_t = J_phi(z_t)^T (phi(z_t) - alpha_t),   M_t = beta_t M_{t-1} - gamma_t u_t w_t^T

1. key pass (spec §3.4): w = k_t into K, then y_hat_t = K_t q_t in R^m (write before read);
2. r_t = f(y_hat_t), f = LN-SiLU or L2-SiLU over the slots (`model.memory.slot_map`, T2);
3. value pass: w = v_t into V with the SAME target alpha_t, then y_t = phi_out(V_t^T r_t), phi_out =
   LN-SiLU over d (spec §3.4 step 3).

Both memories are engine memories (matrix structure, "compression" objective, gd learner with lr
gamma_t, scalar multiplicative retention beta_t, anchored semantics: the codes u of a chunk at its
start, spec §3.6); the value memory reads transposed (`MemorySpec.read = "transposed"`, spec §3.6
step 4: Y = diag(P)(R M_0) - [(R U^T) * Gamma * 1 gamma^T] W). The value pass's writes do not depend
on the key pass (alpha is shared), only its reads do, so the two passes are two engine calls over
the whole sequence: the key pass's reads, then f, then the value pass. Decoding carries both
`MemState`s (weights, chunk anchors K_0 / V_0, position mod C: spec §3.7's chunk-consistent cache).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from zoo.memory import engine
from zoo.memory.compression import SLOT_MAPS, ln_silu
from zoo.memory.spec import MemorySpec
from zoo.memory.state import MemState


@struct.dataclass
class TrellisMemory:
    """Both memories of every [batch, head]: `key`, `value` MemStates (leaves [B, H, ...]; weights
    W_K = K^T, W_V = V^T `[d, m]`, fp32)."""

    key: MemState
    value: MemState


def memory_specs(spec: MemorySpec) -> tuple[MemorySpec, MemorySpec]:
    """(key memory spec, value memory spec): the same memory, the value one read transposed."""
    return dataclasses.replace(spec, read="forward"), dataclasses.replace(spec, read="transposed")


def initial_memory(spec: MemorySpec, init_key: jax.Array, init_value: jax.Array, batch: int) -> TrellisMemory:
    """The fresh memories from the learned K_0^T, V_0^T `[H, d, m]` (spec §3.8: non-zero)."""
    key_spec, value_spec = memory_specs(spec)
    return TrellisMemory(key=engine.initial_heads(key_spec, (init_key,), batch),
                         value=engine.initial_heads(value_spec, (init_value,), batch))


def two_pass(spec: MemorySpec, memory: TrellisMemory | None, q, k, v, alpha, log_beta, gamma, *,
             init_key: jax.Array, init_value: jax.Array, slot_map: str = "ln_silu",
             segment_ids: jax.Array | None = None) -> tuple[TrellisMemory, jax.Array]:
    """The Trellis memory for every [batch, head]: `q, k, v: [B, H, T, d]`, `alpha: [B, H, T, m]`
    (the write target), `log_beta: [B, H, T]` (log forget gate), `gamma: [B, H, T]` (inner step),
    `init_key, init_value: [H, d, m]` (K_0^T, V_0^T). `memory`: the state to continue (None: fresh);
    `segment_ids: [B, T]` (fresh calls; documents on the chunk grid, 0 = padding).
    Returns (memory, y [B, H, T, d] = LN-SiLU(V_t^T f(K_t q_t)), float32)."""
    key_spec, value_spec = memory_specs(spec)
    gates = {"lr": gamma, "log_retention": log_beta}
    slot = SLOT_MAPS[slot_map]
    if memory is not None and q.shape[2] == 1:  # one decoding step: O(1), on the training chunk grid
        def one(key_state, value_state, q, k, v, alpha, g):
            g = engine.gates_at(g, 0)
            key_state, y_hat = engine.decode_step(key_spec, key_state, q[0], k[0], alpha[0], g)
            value_state, y = engine.decode_step(value_spec, value_state, slot(y_hat), v[0], alpha[0], g)
            return key_state, value_state, y[None]

        q, k, v, alpha = (x.astype(jnp.float32) for x in (q, k, v, alpha))
        key_state, value_state, y = jax.vmap(jax.vmap(one))(memory.key, memory.value, q, k, v, alpha, gates)
    else:
        key_state, y_hat = engine.chunk_heads(key_spec, None if memory is None else memory.key, q, k, alpha, gates,
                                              init=(init_key,), segment_ids=segment_ids)
        value_state, y = engine.chunk_heads(value_spec, None if memory is None else memory.value, slot(y_hat), v,
                                            alpha, gates, init=(init_value,), segment_ids=segment_ids)
    return TrellisMemory(key=key_state, value=value_state), ln_silu(y.astype(jnp.float32))

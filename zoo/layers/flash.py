"""Flash attention through Pallas' Triton kernel (`jax.experimental.pallas.ops.gpu.attention.mha`),
with persistent key/value slots merged by log-sum-exp.

The kernel takes causal masks and document `segment_ids` (what packed training needs) with O(T)
memory, but no sliding window and no slots every query sees (Titans Eq. 19). Slots are attended
separately (a dense `[T, P]` score block: P is a handful) and merged with the kernel's output by
their log-sum-exps:

    lse = logaddexp(lse_main, lse_slots),  o = exp(lse_main - lse) o_main + exp(lse_slots - lse) o_slots.

The kernel's own VJP ignores the cotangent of its log-sum-exp, so `flash_with_lse` has its own:
with P the attention weights, d lse_i / d q_i = s (P k)_i and d lse_i / d k_j = s P_ij q_i (s the
query scale), i.e. one more forward with the keys as values and one more value-VJP of the kernel.
On CPU the kernel runs in Pallas' interpreter (tests); on GPUs it is compiled by Triton.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


def _mha_module():
    """Pallas' GPU attention module, or None where this jax does not ship it."""
    try:
        from jax.experimental.pallas.ops.gpu import attention
    except ImportError:
        return None
    return attention if hasattr(attention, "mha") and hasattr(attention, "BlockSizes") else None


def available() -> bool:
    return _mha_module() is not None


def _kernel(q, k, v, segment_ids, *, scale: float, interpret: bool, return_lse: bool = False):
    """`mha` on `[B, T, H, d]` (T a multiple of the block), optionally with the natural-log lse [B, T, H]."""
    mha = _mha_module()
    t = q.shape[1]
    block = 64 if t % 64 == 0 else 16
    small = min(block, 32)
    sizes = mha.BlockSizes(block_q=block, block_k=block, block_q_dkv=small, block_kv_dkv=small, block_q_dq=small,
                           block_kv_dq=small)
    out = mha.mha(q, k, v, segment_ids, sm_scale=scale, causal=True, block_sizes=sizes, interpret=interpret,
                  return_residuals=return_lse)
    if not return_lse:
        return out
    o, lse2 = out  # the kernel keeps log2 sums: [B, H, T]
    return o, jnp.moveaxis(lse2, 1, 2) * LN2


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def flash_with_lse(q, k, v, segment_ids, scale: float, interpret: bool):
    """Causal attention with segment masks and its log-sum-exp: `q, k, v: [B, T, H, d]`,
    `segment_ids: [B, T]` int32 -> (o `[B, T, H, d]`, lse `[B, T, H]` fp32), gradients through both."""
    return _kernel(q, k, v, segment_ids, scale=scale, interpret=interpret, return_lse=True)


def _flash_fwd(q, k, v, segment_ids, scale, interpret):
    return flash_with_lse(q, k, v, segment_ids, scale, interpret), (q, k, v, segment_ids)


def _flash_bwd(scale, interpret, residuals, cotangents):
    q, k, v, segment_ids = residuals
    do, dlse = cotangents
    run = functools.partial(_kernel, segment_ids=segment_ids, scale=scale, interpret=interpret)
    _, pullback = jax.vjp(lambda q, k, v: run(q, k, v), q, k, v)
    dq, dk, dv = pullback(do)
    weight = (scale * dlse)[..., None].astype(q.dtype)  # [B, T, H, 1]
    dq = dq + weight * run(q, k, k)  # s dlse_i (P k)_i
    _, pullback_v = jax.vjp(lambda values: run(q, k, values), k)
    (dk_lse,) = pullback_v(weight * q)  # s sum_i dlse_i P_ij q_i
    return dq, dk + dk_lse, dv, None


flash_with_lse.defvjp(_flash_fwd, _flash_bwd)


def merge_by_lse(o_a, lse_a, o_b, lse_b):
    """Two softmax attentions over disjoint key sets -> the attention over their union:
    `o: [B, T, H, d]`, `lse: [B, T, H]` each."""
    lse = jnp.logaddexp(lse_a, lse_b)
    wa, wb = jnp.exp(lse_a - lse)[..., None], jnp.exp(lse_b - lse)[..., None]
    return (wa * o_a.astype(jnp.float32) + wb * o_b.astype(jnp.float32)).astype(o_a.dtype)


def slot_attention(q, pk, pv, scale: float):
    """Attention of every query over the persistent slots only: `q: [B, T, H, d]`, `pk, pv: [P, H, d]`
    -> (o `[B, T, H, d]`, lse `[B, T, H]` fp32)."""
    scores = jnp.einsum("bthd,phd->bthp", q, pk.astype(q.dtype), preferred_element_type=jnp.float32) * scale
    lse = jax.nn.logsumexp(scores, axis=-1)
    o = jnp.einsum("bthp,phd->bthd", jnp.exp(scores - lse[..., None]).astype(q.dtype), pv.astype(q.dtype))
    return o, lse


def flash_attention(q, k, v, segment_ids=None, persistent=None, *, interpret: bool | None = None):
    """Causal self-attention through the Triton flash kernel: `q: [B, T, Hq, d]`, `k, v: [B, T, Hkv, d]`
    (grouped-query kv heads are repeated), `segment_ids: [B, T]` or None, `persistent: (pk, pv)` each
    `[P, Hkv, d]` or None (merged by log-sum-exp). T is padded to the kernel's block with tokens of
    their own document (-1), which no real query sees. `interpret`: None = on CPU only."""
    b, t, hq, d = q.shape
    rep = hq // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    interpret = jax.devices()[0].platform == "cpu" if interpret is None else interpret
    block = 64 if t > 64 else 16
    size = -(-t // block) * block
    pad = lambda x: jnp.pad(x, [(0, 0), (0, size - t)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    seg = jnp.pad(seg, [(0, 0), (0, size - t)], constant_values=-1)
    scale = d**-0.5
    if persistent is None:
        return _kernel(pad(q), pad(k), pad(v), seg, scale=scale, interpret=interpret)[:, :t]
    o, lse = flash_with_lse(pad(q), pad(k), pad(v), seg, scale, interpret)
    pk, pv = (jnp.repeat(p, rep, axis=1) for p in persistent)
    o_slots, lse_slots = slot_attention(q, pk, pv, scale)
    return merge_by_lse(o[:, :t], lse[:, :t], o_slots, lse_slots)

"""Feature maps of queries and keys as registered parts (zoo.memory.parts): applied per head before
the L2 normalisation (the mixer's `model.memory.qk_activation`).

"poly2" is ATLAS's polynomial map (Behrouz et al. 2025, §3.1 Eq. 22-23; spec titans-atlas-tnt-hope
§3.2) at degree 2, read as a learnable truncated softmax kernel: on the L2-normalised x,

    phi(x) = [sqrt(a_0), sqrt(a_1) x, sqrt(a_2) (x (x) x packed)],  phi(q).phi(k) = sum_i a_i (q.k)^i,

the symmetric x (x) x packed as its upper triangle with sqrt(2) off the diagonal (1 + d + d(d+1)/2
features: 2145 at d = 64), a_i = softplus(r_i) >= 0 learned per head from a_i = 1/i! (the Taylor
coefficients of exp). The mixer's L2 normalisation afterwards divides by sqrt(sum a_i), so the
memory's keys stay unit vectors and the kernel is sum_i a_i (q.k)^i / sum_i a_i.

"exp2" is the same map with the a_i fixed at 1/i!: DeepTransformers' exponential map phi* (ATLAS
Eq. 5, exp(q.k) = phi*(q).phi*(k)) truncated at degree 2, since the infinite map needs a state that
grows with the context (an attention-like cache; spec §3.5).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from zoo.memory.parts import FeatureMap, register_feature_map

register_feature_map(FeatureMap("silu", jax.nn.silu, doc="SiLU (Titans §4.4, Gated DeltaNet)"))
register_feature_map(FeatureMap("identity", lambda x: x, doc="no map: the projections themselves"))

POLY2_INIT = (1.0, 1.0, 0.5)  # a_i = 1/i!


def polynomial_features(x: jax.Array, raw: jax.Array) -> jax.Array:
    """phi(x) of degree 2 for `x: [..., H, d]` and raw coefficients `raw: [H, 3]` (a = softplus(raw))
    -> `[..., H, 1 + d + d (d + 1) / 2]`."""
    x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)
    rows, cols = np.triu_indices(x.shape[-1])
    pair_scale = np.where(rows == cols, 1.0, math.sqrt(2.0)).astype(np.float32)
    quadratic = x[..., rows] * x[..., cols] * pair_scale
    root = jnp.sqrt(jax.nn.softplus(raw.astype(x.dtype)))  # [H, 3]
    constant = jnp.broadcast_to(root[:, :1], x.shape[:-1] + (1,))
    return jnp.concatenate([constant, root[:, 1:2] * x, root[:, 2:3] * quadratic], axis=-1)


register_feature_map(FeatureMap(
    "poly2", polynomial_features, out_dim=lambda d: 1 + d + d * (d + 1) // 2, coefficients=POLY2_INIT,
    doc="ATLAS's degree-2 polynomial map, phi(q).phi(k) = sum_i a_i (q.k)^i with learned a_i from 1/i!"))

_EXP2_RAW = np.log(np.expm1(np.asarray(POLY2_INIT, np.float32)))[None]  # [1, 3]: a_i = 1/i!, shared by every head
register_feature_map(FeatureMap(
    "exp2", lambda x: polynomial_features(x, jnp.asarray(_EXP2_RAW)), out_dim=lambda d: 1 + d + d * (d + 1) // 2,
    doc="DeepTransformers' exponential map phi* (phi*(q).phi*(k) = exp(q.k)) truncated at degree 2: fixed a_i = 1/i!"))

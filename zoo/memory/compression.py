"""Trellis's compression objective (arXiv 2512.23852; spec miras-lattice-trellis §3.3), a registered
part, and the normalised-SiLU maps Trellis uses around its memories.

Per token, with the memory's output z = M(k) (for Trellis's matrix memory z = M_{t-1} w_t in R^m,
the slot code) and the target code alpha_t (the objective's "values"):

    l = 1/2 ||phi(z) - alpha||^2,    dl/dz = u = J_phi(z)^T (phi(z) - alpha)        (spec §3.3)

so the engine's gradient factors (one VJP through the probes) are exactly Trellis's codes u_i, and
gd with retention gives M_t = beta_t M_{t-1} - gamma_t u_t w_t^T. The paper's loss carries a factor 2,
folded into gamma. phi is `MemorySpec.compression_map` (T1: never specified in the paper):
"ln_silu" = LayerNorm(SiLU(z)) over the slot axis (parameter-free, eps = PHI_EPS >= 1e-3: at z = 0 the
LN-SiLU Jacobian is (0.5 / sqrt(eps)) (I - 1 1^T / m), spec §3.8), "l2_silu" = SiLU(z) / ||SiLU(z)||,
"silu", "identity" (the gated-delta-rule control, spec §3.3). JAX differentiates through LayerNorm,
so the non-diagonal LN Jacobian is exact (spec §5 pitfall 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.memory.parts import Objective, register_objective

PHI_EPS = 1e-3  # inside the loss (spec §3.8: >= 1e-3 keeps ||u|| bounded near z = 0)
READ_EPS = 1e-5  # f (the inter-pass map) and phi_out (the value readout): ordinary LayerNorm eps


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Parameter-free LayerNorm over the last axis."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


def ln_silu(x: jax.Array, eps: float = READ_EPS) -> jax.Array:
    """LayerNorm(SiLU(x)) over the last axis `[..., n] -> [..., n]` (parameter-free)."""
    return layer_norm(jax.nn.silu(x), eps)


def l2_silu(x: jax.Array, eps: float = READ_EPS) -> jax.Array:
    """SiLU(x) / ||SiLU(x)|| over the last axis (eps under the square root keeps it smooth at 0)."""
    s = jax.nn.silu(x)
    return s * jax.lax.rsqrt(jnp.sum(s * s, axis=-1, keepdims=True) + eps)


COMPRESSION_MAPS = {
    "ln_silu": lambda z: ln_silu(z, PHI_EPS),
    "l2_silu": lambda z: l2_silu(z, PHI_EPS),
    "silu": jax.nn.silu,
    "identity": lambda z: z,
}
SLOT_MAPS = {"ln_silu": ln_silu, "l2_silu": l2_silu}  # f, the inter-pass map r = f(y_hat) (spec §3.4, T2)


def compression_loss(out, v, gates=None, spec=None):
    """`out, v: [n, m]` (codes M(k) and targets alpha) -> sum over tokens of 1/2 ||phi(out) - v||^2,
    phi = COMPRESSION_MAPS[spec.compression_map] (LN-SiLU without a spec)."""
    phi = COMPRESSION_MAPS["ln_silu" if spec is None else spec.compression_map]
    return 0.5 * jnp.sum(jnp.square(phi(out) - v))


register_objective(Objective("compression", compression_loss, gradient_depends_on_weights=True,
                             doc="1/2 ||phi(M(k)) - alpha||^2, phi = compression_map (Trellis)"))

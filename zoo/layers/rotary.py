"""Rotary position embeddings (RoFormer, Su et al. 2021, eq. 34), half-split layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotates `x: [batch, seq, heads, dim]` by absolute `positions: [seq]` or `[batch, seq]`.

    Pairs (x[i], x[i + dim/2]) are rotated by angle pos * theta^(-2i/dim); computed in float32.
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {dim}")
    freqs = theta ** (-jnp.arange(0, dim // 2, dtype=jnp.float32) * 2.0 / dim)
    pos = jnp.asarray(positions, jnp.float32)
    if pos.ndim == 1:
        pos = pos[None, :]
    angles = pos[:, :, None, None] * freqs  # [batch|1, seq, 1, dim/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : dim // 2], xf[..., dim // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)

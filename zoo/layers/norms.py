"""RMSNorm (Zhang & Sennrich 2019), statistics in float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.param import constant_param
from zoo.layers.recompute import recompute


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale over the last dim `[..., dim]`."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype: jnp.dtype = jnp.float32,
                 axis_name: str | None = "embed"):
        self.eps, self.dtype = eps, dtype
        self.scale = constant_param(jnp.ones((dim,)), (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _rms_norm(x, self.scale.value, self.eps, self.dtype)


@functools.partial(recompute, static_argnums=(2, 3))
def _rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
    """Checkpointed: the backward pass keeps x (in its own dtype), not float32 copies."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * scale).astype(dtype)

"""Data-dependent gate heads: a bias-carrying projection of the block input, in float32."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.linear import Projection
from zoo.layers.param import constant_param


def logit(p: float) -> float:
    """The bias at which a sigmoid gate starts at p (0 < p < 1)."""
    return math.log(p / (1.0 - p))


class GateHead(nnx.Module):
    """`x: [batch, seq, d_model] -> z: [batch, seq, *out_shape]` float32 pre-activations,
    z = x W + b with b initialised to `bias_init` (a float, or an array broadcast to out_shape:
    sets the gate's starting value). `dtype`: the matmul's (float32 by default; a wide gate can
    run in the compute dtype, its output is float32 either way)."""

    def __init__(self, d_model: int, out_shape: tuple[int, ...], *, axes: tuple[str | None, ...], bias_init,
                 std: float, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.proj = Projection((d_model,), out_shape, axes=("embed",) + axes, std=std, dtype=dtype, rngs=rngs)
        self.bias = constant_param(jnp.full(out_shape, bias_init), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x).astype(jnp.float32) + self.bias.value

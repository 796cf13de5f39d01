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
    run in the compute dtype, its output is float32 either way).

    `rank` r > 0: the low-rank form z = (x W_down) W_up + b, W_down `[d_model, r]` ~ N(0, std),
    W_up `[r, *out_shape]` ~ N(0, 1/r) (so z has a full-rank head's scale at init; Miras §5.4's
    gates, D -> r -> H d with r in {32, 64}, spec miras-lattice-trellis §1.6)."""

    def __init__(self, d_model: int, out_shape: tuple[int, ...], *, axes: tuple[str | None, ...], bias_init,
                 std: float, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32, rank: int = 0):
        if rank < 0:
            raise ValueError(f"GateHead rank must be >= 0 (0 = one full linear map), got {rank}")
        self.down = (Projection((d_model,), (rank,), axes=("embed", None), std=std, dtype=dtype, rngs=rngs)
                     if rank else None)
        self.proj = Projection((rank or d_model,), out_shape, axes=(None if rank else "embed",) + axes,
                               std=1.0 / math.sqrt(rank) if rank else std, dtype=dtype, rngs=rngs)
        self.bias = constant_param(jnp.full(out_shape, bias_init), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x if self.down is None else self.down(x)).astype(jnp.float32) + self.bias.value

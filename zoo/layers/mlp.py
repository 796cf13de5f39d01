"""SwiGLU feed-forward block (Shazeer 2020, eq. 6): W2 (silu(x W1) * (x W3))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.linear import Projection
from zoo.layers.recompute import recompute


def swiglu_hidden_dim(d_model: int, multiple_of: int = 32) -> int:
    """Llama's default width: 2/3 of 4 * d_model, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nnx.Module):
    """`[..., d_model] -> [..., d_model]` with a `hidden_dim`-wide gated hidden layer."""

    def __init__(self, d_model: int, hidden_dim: int, *, std: float, out_std: float,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.gate = Projection((d_model,), (hidden_dim,), axes=("embed", "mlp"), std=std, dtype=dtype, rngs=rngs)
        self.up = Projection((d_model,), (hidden_dim,), axes=("embed", "mlp"), std=std, dtype=dtype, rngs=rngs)
        self.down = Projection((hidden_dim,), (d_model,), axes=("mlp", "embed"), std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(_gated(self.gate(x), self.up(x)))


@recompute
def _gated(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, recomputed in the backward pass (only the two projections are kept)."""
    return jax.nn.silu(gate) * up

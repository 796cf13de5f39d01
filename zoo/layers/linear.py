"""Bias-free projections written as einsums over named dimensions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.param import normal_param


class Projection(nnx.Module):
    """y = x @ W for `x: [..., *in_shape] -> y: [..., *out_shape]` (no bias).

    `in_shape` and `out_shape` are tuples (e.g. in (d_model,), out (heads, head_dim)); `axes`
    names every dimension of W = [*in_shape, *out_shape] for sharding.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *,
                 axes: tuple[str | None, ...], std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.in_shape, self.out_shape, self.dtype = tuple(in_shape), tuple(out_shape), dtype
        self.kernel = normal_param(rngs, self.in_shape + self.out_shape, axes, std)

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        if x.shape[x.ndim - n_in:] != self.in_shape:
            raise ValueError(f"Projection expects trailing dims {self.in_shape}, got input {x.shape}")
        w = self.kernel.value.astype(self.dtype)
        return jnp.tensordot(x.astype(self.dtype), w, axes=n_in)

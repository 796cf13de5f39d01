"""Token embedding table, also usable as the (tied) output head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.param import normal_param


class Embedding(nnx.Module):
    """`tokens: [batch, seq] int -> [batch, seq, d_model]`; `attend(x)` gives logits over the vocab."""

    def __init__(self, vocab_size: int, d_model: int, *, std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.vocab_size, self.dtype = vocab_size, dtype
        self.table = normal_param(rngs, (vocab_size, d_model), ("vocab", "embed"), std)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.table.value, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """`x: [..., d_model] -> logits [..., vocab]` in float32 (x @ table^T)."""
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.table.value.astype(self.dtype),
                          preferred_element_type=jnp.float32)

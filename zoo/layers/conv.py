"""Short causal depthwise convolution over time (as in Mamba / GDN / Titans mixers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.param import constant_param


class ShortConv(nnx.Module):
    """`x: [batch, seq, channels] -> y` with y_t = sum_j w[j] * x_{t-(K-1)+j}, per channel.

    Initialised to the identity (last tap 1, others 0). `tail: [batch, K-1, channels]` carries
    the last K-1 inputs of the previous call so a sequence can be fed in pieces; with
    `segment_ids: [batch, seq]` (and no tail) taps never reach across a document boundary.
    """

    def __init__(self, channels: int, width: int, *, dtype: jnp.dtype, axis_name: str | None = "embed"):
        if width < 1:
            raise ValueError(f"ShortConv width must be >= 1, got {width}")
        self.width, self.channels, self.dtype = width, channels, dtype
        self.kernel = constant_param(jnp.zeros((width, channels)).at[-1].set(1.0), ("conv", axis_name))

    def init_tail(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.width - 1, self.channels), self.dtype)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
                 tail: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        batch, seq, _ = x.shape
        k = self.width
        x = x.astype(self.dtype)
        prev = self.init_tail(batch) if tail is None else tail.astype(self.dtype)
        xp = jnp.concatenate([prev, x], axis=1)  # [batch, K-1+seq, channels]
        w = self.kernel.value.astype(self.dtype)
        same_doc = None
        if segment_ids is not None and tail is None:
            segp = jnp.concatenate([jnp.full((batch, k - 1), -1, segment_ids.dtype), segment_ids], axis=1)
            same_doc = jnp.stack([segp[:, j:j + seq] == segment_ids for j in range(k)])  # [K, batch, seq]
        y = _causal_taps(xp, w, same_doc)
        return y, xp[:, xp.shape[1] - (k - 1):]


@jax.checkpoint
def _causal_taps(xp: jax.Array, w: jax.Array, same_doc: jax.Array | None) -> jax.Array:
    """y_t = sum_j w[j] x_{t-(K-1)+j} for `xp: [batch, K-1+seq, channels]`, `w: [K, channels]`;
    `same_doc: [K, batch, seq]` drops taps from another document. Checkpointed: the backward pass
    keeps only xp and recomputes the K shifted taps (K copies of the input otherwise)."""
    k = w.shape[0]
    seq = xp.shape[1] - (k - 1)
    y = jnp.zeros(xp.shape[:1] + (seq,) + xp.shape[2:], xp.dtype)
    for j in range(k):
        tap = xp[:, j:j + seq] * w[j]
        if same_doc is not None:
            tap = jnp.where(same_doc[j][..., None], tap, 0)
        y = y + tap
    return y

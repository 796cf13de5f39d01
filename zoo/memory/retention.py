"""Retention (forgetting) as registered parts (zoo.memory.parts): none, scalar and channel decays;
per-token decays as log values.

log l_t <= 0 is given per token ([T] scalar, or [T, sum_l d_in_l] per input channel of every layer). Their in-chunk products
(`kernels.anchored_memory.chunked.decayed_terms`) are never formed by dividing cumulative products:
beta_r / beta_j = exp(L_r - L_j) with L the cumulative sum of log l, masked (j > r) before the exp
(Titans spec §1.6, numerics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zoo.memory.parts import Retention, register_retention, retention
from zoo.memory.spec import MemorySpec


register_retention(Retention("none", gate="none", apply=lambda weights, log_retention: weights,
                             doc="no forgetting"))
def scalar_decay(weights: tuple[jax.Array, ...], log_retention: jax.Array) -> tuple[jax.Array, ...]:
    """W <- l_t W for every layer, `log_retention`: [] (one decay per head and token)."""
    return tuple(w * jnp.exp(log_retention) for w in weights)


register_retention(Retention("scalar", gate="scalar", apply=scalar_decay,
                             doc="W <- l_t W, one l_t per head and token (Titans' 1 - alpha_t)"))
def channel_width(layer_shapes) -> int:
    """The number of decays a channel retention takes per token: the input channels of every layer
    (`layer_shapes`: [(d_in, d_out)] per layer; dk for a matrix memory, dk + hidden for an MLP)."""
    return sum(d_in for d_in, _ in layer_shapes)


def split_channels(weights: tuple[jax.Array, ...], per_channel: jax.Array) -> list[jax.Array]:
    """`per_channel [..., sum_l d_in_l]` -> one `[..., d_in_l]` per layer (`weights`: one `[d_in, d_out]` each)."""
    ends = np.cumsum([w.shape[0] for w in weights])[:-1]
    return jnp.split(per_channel, ends, axis=-1)


def channel_decay(weights: tuple[jax.Array, ...], log_retention: jax.Array) -> tuple[jax.Array, ...]:
    """W_l <- diag(l_t^(l)) W_l for every layer, one decay per input channel (row) of each layer:
    `log_retention` `[sum_l d_in_l]` in layer order (Miras §5.4's channel-wise gates on the input axis
    of each weight matrix, spec miras-lattice-trellis §1.6: the GLA form of every layer)."""
    return tuple(w * jnp.exp(part)[:, None] for w, part in zip(weights, split_channels(weights, log_retention),
                                                               strict=True))


register_retention(Retention(
    "channel", gate="channel", apply=channel_decay,
    doc="W_l <- diag(l_t) W_l, one l_t per input channel of each layer (the rows of a matrix memory; "
        "the key axis of an MLP's first layer and the hidden axis of the next)"))


def retain(spec: MemorySpec, weights: tuple[jax.Array, ...], log_retention: jax.Array) -> tuple[jax.Array, ...]:
    """One token's forgetting (the spec's registered retention)."""
    return retention(spec.retention).apply(weights, log_retention)

"""MemState: what a memory carries from one call (or token) to the next."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from zoo.memory.structures import Weights


@struct.dataclass
class MemState:
    """One sequence's memory (the mixer vmaps it to leading axes [batch, heads]).

    weights: W_t, the fast weights after the last token (one matrix per layer, fp32).
    momentum: S_t, the surprise momentum (zeros for plain GD).
    anchor: the weights at the start of the current chunk: anchored tokens take their inner
        gradients there, so a prefill that ends mid-chunk hands over to decoding exactly.
    pos: [] int32, tokens processed since the anchor (position in the chunk grid).
    """

    weights: Weights
    momentum: Weights
    anchor: Weights
    pos: jax.Array


def initial_state(init_weights: Weights) -> MemState:
    """The state before any token: W = anchor = W_0 (learned), S = 0, pos = 0."""
    w = tuple(jnp.asarray(x, jnp.float32) for x in init_weights)
    return MemState(weights=w, momentum=tuple(jnp.zeros_like(x) for x in w), anchor=w,
                    pos=jnp.zeros((), jnp.int32))

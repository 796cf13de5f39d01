"""MemState: what a memory carries from one call (or token) to the next."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from zoo.memory import parts, window
from zoo.memory.spec import MemorySpec
from zoo.memory.structures import Weights


@struct.dataclass
class MemState:
    """One sequence's memory (the mixer vmaps it to leading axes [batch, heads]).

    weights: W_t, the fast weights after the last token (one matrix per layer, fp32).
    anchor: the weights at the start of the current chunk: anchored tokens take their inner
        gradients there, so a prefill that ends mid-chunk hands over to decoding exactly.
    pos: [] int32, tokens processed since the anchor (position in the chunk grid).
    buffers: {name: value} the state the spec's learner declares (`parts.Buffer`), e.g.
        "momentum": S_t, the surprise momentum (one array per layer).
    window: the Omega window's last window - 1 tokens (zoo.memory.window.Window); {} when the
        spec's window is 1.
    """

    weights: Weights
    anchor: Weights
    pos: jax.Array
    buffers: dict
    window: dict = struct.field(default_factory=dict)


def initial_state(spec: MemorySpec, init_weights: Weights) -> MemState:
    """The state before any token: W = anchor = W_0 (learned), pos = 0, every buffer at its
    declared initial value (momentum S = 0), an empty Omega window."""
    w = tuple(jnp.asarray(x, jnp.float32) for x in init_weights)
    buffers = {b.name: b.init(w) for b in parts.learner(spec.learner).buffers}
    return MemState(weights=w, anchor=w, pos=jnp.zeros((), jnp.int32), buffers=buffers,
                    window=window.empty(spec, w[0].shape[0], w[-1].shape[-1]))

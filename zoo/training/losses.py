"""Next-token cross-entropy that never holds float32 logits for the whole batch.

The final norm and vocabulary projection run piece by piece along the sequence inside a
checkpointed `lax.scan`: the forward keeps one piece's `[batch, piece, vocab]` logits at a time
and the backward recomputes them per piece, so the loss costs O(batch * piece * vocab) memory
instead of four full `[batch, seq, vocab]` float32 tensors (0.5 MB per token at vocab 32k).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def chunked_token_losses(logits_fn: Callable[[jax.Array], jax.Array], hidden: jax.Array, targets: jax.Array,
                         mask: jax.Array, *, piece: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed masked NLL, number of scored tokens and number of correct argmax predictions.

    logits_fn: `[batch, p, d_model] -> [batch, p, vocab]` float32 (the model's norm and head).
    hidden: `[batch, seq, d_model]`; targets: int `[batch, seq]`; mask: float `[batch, seq]`.
    piece: sequence positions per piece (0 or >= seq: the whole sequence at once). The sequence
    is padded to a multiple of `piece` with masked positions, so any length works.
    """
    b, t = targets.shape
    if hidden.shape[:2] != (b, t) or mask.shape != (b, t):
        raise ValueError(f"hidden {hidden.shape}, targets {targets.shape} and mask {mask.shape} must share "
                         "[batch, seq]")
    mask = mask.astype(jnp.float32)

    def piece_losses(h, y, m):
        logits = logits_fn(h).astype(jnp.float32)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        return jnp.sum(nll * m), jnp.sum(correct * m)

    if piece <= 0 or piece >= t:
        nll, correct = piece_losses(hidden, targets, mask)
        return nll, jnp.sum(mask), correct
    n = -(-t // piece)
    pad = n * piece - t
    split = lambda x: jnp.moveaxis(  # noqa: E731  [b, t, ...] -> [n, b, piece, ...]
        jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)).reshape((b, n, piece) + x.shape[2:]), 1, 0)

    @jax.checkpoint
    def body(carry, xs):
        nll, correct = piece_losses(*xs)
        return (carry[0] + nll, carry[1] + correct), None

    zero = jnp.zeros((), jnp.float32)
    (nll, correct), _ = jax.lax.scan(body, (zero, zero), (split(hidden), split(targets), split(mask)))
    return nll, jnp.sum(mask), correct

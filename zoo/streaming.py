"""Streaming a long sequence through a model in fixed-size segments with its carried cache.

Recurrent models (memory layers) carry a constant-size state, so streaming runs in memory
independent of the context length; attention models carry their KV cache (sized by
`init_cache(batch, max_len)`, or by the window for sliding-window layers). The segments run
under one `jax.lax.scan` (one compiled segment step, whatever the length) plus one call for the
remainder when the length is not a multiple of the segment length.

    logits = stream_logits(model, tokens, segment_len=512)      # == model(tokens)
    nll = stream_nll(model, tokens, targets, segment_len=512)   # [batch, seq], O(segment) logits
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def check_segment_len(segment_len: int) -> int:
    if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len < 1:
        raise ValueError(f"segment_len must be a positive integer number of tokens, got {segment_len!r}")
    return segment_len


def stream(model: nnx.Module, tokens: jax.Array, cache: Any, segment_len: int,
           per_segment: Callable[[jax.Array, dict], Any], extras: dict | None = None) -> tuple[Any, Any]:
    """Feeds `tokens: [batch, seq]` through `model.extend` in segments of `segment_len`.

    `per_segment(logits [batch, s, vocab], extras_segment) -> pytree of [batch, s, ...]` reduces
    each segment's logits (so full logits never need to exist at once); `extras` holds other
    `[batch, seq, ...]` arrays (e.g. targets) cut into the same segments. Returns (the per-segment
    outputs concatenated along seq, the cache after the last token). Call it under `jax.jit`.
    """
    extras = extras or {}
    batch, seq = tokens.shape
    n, rem = divmod(seq, segment_len)
    outs = []
    if n:
        def to_segments(a):  # [batch, n*s, ...] -> [n, batch, s, ...]
            a = a[:, : n * segment_len].reshape(batch, n, segment_len, *a.shape[2:])
            return jnp.moveaxis(a, 1, 0)

        def body(c, xs):
            seg, ext = xs
            logits, c = model.extend(seg, c)
            return c, per_segment(logits, ext)

        cache, ys = jax.lax.scan(body, cache, (to_segments(tokens), jax.tree.map(to_segments, extras)))
        outs.append(jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1).reshape(batch, n * segment_len, *y.shape[3:]), ys))
    if rem:
        logits, cache = model.extend(tokens[:, n * segment_len:], cache)
        outs.append(per_segment(logits, jax.tree.map(lambda a: a[:, n * segment_len:], extras)))
    out = outs[0] if len(outs) == 1 else jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), *outs)
    return out, cache


def _check_tokens(tokens) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be [batch, seq >= 1] integer ids, got shape {tokens.shape} {tokens.dtype}")
    return tokens.astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _stream_logits(graphdef, state, tokens, segment_len):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    logits, _ = stream(model, tokens, cache, segment_len, lambda logits, _: logits)
    return logits


def stream_logits(model: nnx.Module, tokens: jax.Array, segment_len: int) -> jax.Array:
    """`tokens: [batch, seq] -> logits [batch, seq, vocab]`, fed in segments from a fresh cache
    (equal to `model(tokens)` up to float rounding)."""
    tokens = _check_tokens(tokens)
    graphdef, state = nnx.split(model)
    return _stream_logits(graphdef, state, tokens, check_segment_len(segment_len))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _stream_nll(graphdef, state, tokens, targets, segment_len):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])

    def nll(logits, ext):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, ext["targets"][..., None], axis=-1)[..., 0]

    out, _ = stream(model, tokens, cache, segment_len, nll, {"targets": targets})
    return out


def stream_nll(model: nnx.Module, tokens: jax.Array, targets: jax.Array, segment_len: int) -> jax.Array:
    """Per-token negative log-likelihood `[batch, seq]` of `targets` (the next tokens), computed
    segment by segment so only `[batch, segment_len, vocab]` logits exist at a time."""
    tokens, targets = _check_tokens(tokens), _check_tokens(targets)
    if targets.shape != tokens.shape:
        raise ValueError(f"targets {targets.shape} must have the shape of tokens {tokens.shape}")
    graphdef, state = nnx.split(model)
    return _stream_nll(graphdef, state, tokens, targets, check_segment_len(segment_len))

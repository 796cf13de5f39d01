"""Sampling from any registered language model through its cache (`extend` / `decode_step`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.streaming import check_segment_len, stream


def _sample(logits: jax.Array, temperature: float, rng: jax.Array | None) -> jax.Array:
    """`logits: [batch, vocab] -> [batch] int32`; greedy when temperature == 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _generate(graphdef, state, prompt, rng, max_new_tokens: int, temperature: float, segment_len: int):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt.shape
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    if prompt_len > 1:  # all but the last prompt token, in segments; no logits kept
        _, cache = stream(model, prompt[:, :-1], cache, segment_len, lambda logits, _: {})
    logits, cache = model.extend(prompt[:, -1:], cache)
    rngs = jax.random.split(rng, max_new_tokens)
    first = _sample(logits[:, -1], temperature, rngs[0])

    def step(carry, step_rng):
        token, cache = carry
        logits, cache = model.decode_step(token[:, None], cache)
        nxt = _sample(logits[:, -1], temperature, step_rng)
        return (nxt, cache), token

    (last, _), tokens = jax.lax.scan(step, (first, cache), rngs[1:])
    new = jnp.concatenate([tokens.T, last[:, None]], axis=1) if max_new_tokens > 1 else last[:, None]
    return jnp.concatenate([prompt, new], axis=1)


def generate(model: nnx.Module, prompt: jax.Array, max_new_tokens: int = 32, temperature: float = 0.0,
             rng: jax.Array | None = None, segment_len: int = 2048) -> jax.Array:
    """Continues `prompt: [batch, prompt_len] int32` by `max_new_tokens` tokens.

    Returns `[batch, prompt_len + max_new_tokens]`. temperature 0 is greedy; otherwise tokens
    are sampled from softmax(logits / temperature) and `rng` (a `jax.random.key`) is required.
    The prompt is prefilled in segments of `segment_len` tokens with the carried cache
    (`zoo.streaming`): recurrent models then need memory independent of the prompt length.
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [batch, prompt_len >= 1] token ids, got shape {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(seed)")
    if rng is None:
        rng = jax.random.key(0)
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompt.astype(jnp.int32), rng, int(max_new_tokens), float(temperature),
                     check_segment_len(segment_len))

"""zoo.streaming: per-token NLL through scanned segments == one call, generation with a segmented
prefill, bad arguments (segmented logits for every model: test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ModelConfig
from zoo.streaming import stream_logits, stream_nll

V = 53


def build(name):
    cfg = ModelConfig(name=name, vocab_size=V, d_model=16, num_layers=1, num_heads=2, sliding_window=6,
                      persistent_tokens=2 if name != "transformer" else 0,
                      memory=zoo.registry.memory_config(name, chunk_size=4, expansion=2))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def test_segment_streamed_nll_equals_one_call():
    model = build("titans_lmm")
    toks = jax.random.randint(jax.random.key(1), (2, 23), 0, V, jnp.int32)
    full = nnx.jit(lambda m, t: m(t))(model, toks)
    targets = jnp.roll(toks, -1, axis=1)
    want = -jnp.take_along_axis(jax.nn.log_softmax(full), targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(stream_nll(model, toks, targets, 7), want, atol=1e-5, rtol=1e-5)


def test_generation_prefill_in_segments_equals_one_segment():
    model = build("titans_lmm")
    prompt = jax.random.randint(jax.random.key(2), (2, 19), 0, V, jnp.int32)
    one = zoo.generate(model, prompt, max_new_tokens=5, segment_len=64)
    np.testing.assert_array_equal(zoo.generate(model, prompt, max_new_tokens=5, segment_len=4), one)


def test_bad_segment_len():
    with pytest.raises(ValueError, match="segment_len"):
        stream_logits(build("transformer"), jnp.zeros((1, 4), jnp.int32), 0)

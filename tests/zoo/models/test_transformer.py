"""Transformer++ baseline: shapes, causality, cache decoding == forward, sliding-window cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ModelConfig

BASE = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4)


def build(**kw):
    return zoo.build_model(ModelConfig(**{**BASE, **kw}), rngs=nnx.Rngs(0))


def tokens(batch=2, seq=19, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, seq), 0, BASE["vocab_size"], jnp.int32)


_forward = nnx.jit(lambda m, t: m(t))
_forward_seg = nnx.jit(lambda m, t, s: m(t, segment_ids=s))
_extend = nnx.jit(lambda m, t, c: m.extend(t, c))
_decode = nnx.jit(lambda m, t, c: m.decode_step(t, c))


def decode_all(model, toks, prefill):
    cache = model.init_cache(toks.shape[0], toks.shape[1])
    logits, cache = _extend(model, toks[:, :prefill], cache)
    out = [logits]
    for t in range(prefill, toks.shape[1]):
        step_logits, cache = _decode(model, toks[:, t:t + 1], cache)
        out.append(step_logits)
    return jnp.concatenate(out, axis=1)


def test_forward_shape_and_dtype():
    model = build()
    logits = model(tokens())
    assert logits.shape == (2, 19, BASE["vocab_size"]) and logits.dtype == jnp.float32


@pytest.mark.parametrize("kw", [{}, {"num_kv_heads": 2}, {"attn_conv_width": 4}, {"tie_embeddings": False},
                                {"sliding_window": 5}, {"sliding_window": 5, "attn_conv_width": 3}])
@pytest.mark.parametrize("prefill", [1, 7])
def test_decode_matches_forward(kw, prefill):
    model = build(**kw)
    toks = tokens()
    np.testing.assert_allclose(decode_all(model, toks, prefill), _forward(model, toks), atol=1e-5, rtol=1e-5)


def test_sliding_window_cache_is_window_sized_and_exact():
    model = build(sliding_window=4)
    cache = model.init_cache(2, 1000)
    assert cache[0].k.shape[1] == 4  # constant memory in context length
    toks = tokens(seq=23)
    np.testing.assert_allclose(decode_all(model, toks, 3), _forward(model, toks), atol=1e-5, rtol=1e-5)


def test_sliding_window_limits_receptive_field():
    model = build(sliding_window=3, num_layers=1)
    toks = tokens(seq=12)
    changed = toks.at[:, 2].set((toks[:, 2] + 1) % BASE["vocab_size"])
    diff = jnp.abs(_forward(model, toks) - _forward(model, changed)).max(axis=(0, 2))
    assert np.all(np.asarray(diff[:2]) == 0)  # causal
    assert np.all(np.asarray(diff[2:5]) > 0)  # positions 2..4 see token 2
    assert np.all(np.asarray(diff[5:]) == 0)  # one layer, window 3: no further


def test_causal():
    model = build(attn_conv_width=4)
    toks = tokens()
    changed = toks.at[:, 10].set((toks[:, 10] + 1) % BASE["vocab_size"])
    a, b = _forward(model, toks), _forward(model, changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_segment_ids_equal_separate_sequences():
    model = build(attn_conv_width=4)
    toks = tokens(batch=1, seq=20)
    seg = jnp.array([[1] * 8 + [2] * 12])
    packed = _forward_seg(model, toks, seg)
    np.testing.assert_allclose(packed[:, :8], _forward(model, toks[:, :8]), atol=1e-5)
    np.testing.assert_allclose(packed[:, 8:], _forward(model, toks[:, 8:]), atol=1e-5)


def test_bf16_compute_close_to_fp32():
    toks = tokens()
    f32 = _forward(build(), toks)
    bf16 = _forward(build(dtype="bfloat16"), toks)
    assert bf16.dtype == jnp.float32
    assert float(jnp.abs(f32 - bf16).max()) < 0.05


def test_generate_greedy_matches_argmax_loop():
    model = build()
    prompt = tokens(seq=5)
    out = zoo.generate(model, prompt, max_new_tokens=6)
    assert out.shape == (2, 11)
    np.testing.assert_array_equal(out[:, :5], prompt)
    # every generated token is the argmax of the full forward pass at the position before it
    greedy = jnp.argmax(_forward(model, out)[:, 4:10], axis=-1)
    np.testing.assert_array_equal(out[:, 5:], greedy)


def test_generate_sampling_and_errors():
    model = build()
    prompt = tokens(seq=3)
    a = zoo.generate(model, prompt, 4, temperature=1.0, rng=jax.random.key(3))
    b = zoo.generate(model, prompt, 4, temperature=1.0, rng=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        zoo.generate(model, prompt, 4, temperature=1.0)
    with pytest.raises(ValueError, match="prompt"):
        zoo.generate(model, prompt[0], 4)


def test_bad_inputs():
    model = build()
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        model(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        model(jnp.zeros((1, 3), jnp.float32))
    cache = model.init_cache(2, 8)
    with pytest.raises(ValueError, match="one token"):
        model.decode_step(tokens(seq=2), cache)


def test_registry_lists_transformer():
    info = zoo.registry.models()["transformer"]
    assert info.family == "Transformer" and info.tiny_config.endswith(".yaml")

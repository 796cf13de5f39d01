"""`model.kv_cache`: attention layers decode from a quantized cache (zoo.layers.kv_cache). Decoding
after a prefill equals decoding token by token; the quantized cache changes the outputs (it is
used) but stays close to full precision; a trained model keeps its perplexity within 1% with int8
and 4-bit TurboQuant; configs and `set_kv_cache` refuse what they cannot do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ConfigError
from zoo.data.pipeline import make_data
from zoo.evaluation.perplexity import cached_perplexity


def build(name, *overrides):
    cfg = zoo.load_config(zoo.registry.models()[name].tiny_config, overrides=list(overrides))
    return zoo.build_model(cfg.model, rngs=nnx.Rngs(0)), cfg


step = nnx.jit(lambda model, tokens, cache: model.extend(tokens, cache))


def decode_tokens(model, tokens, cache, start):
    outs = []
    for t in range(start, tokens.shape[1]):
        logits, cache = step(model, tokens[:, t:t + 1], cache)
        outs.append(logits)
    return jnp.concatenate(outs, axis=1)


# int8 through a model is the trained-model perplexity test's (its split invariance is the kernel's,
# tests/isolated/test_quantized_attention.py)
@pytest.mark.parametrize("name, overrides", [
    ("transformer", ["model.kv_cache.dtype=int4_kivi", "model.kv_cache.recent=0", "model.num_kv_heads=2"]),
    ("transformer", ["model.kv_cache.dtype=turbo_mse", "model.kv_cache.bits=3", "model.kv_cache.recent=0",
                     "model.sliding_window=9"]),
    ("transformer", ["model.kv_cache.dtype=turbo_prod", "model.kv_cache.recent=4", "model.kv_cache.backend=pallas"]),
    ("transformer", ["model.kv_cache.dtype=turbo_mse", "model.kv_cache.bits=2", "model.kv_cache.outliers=8",
                     "model.kv_cache.recent=0"]),
    ("titans_mal", ["model.kv_cache.dtype=turbo_mse", "model.kv_cache.recent=0"]),
])
def test_decode_after_prefill_equals_decode_token_by_token(name, overrides):
    model, cfg = build(name, "model.d_model=64", "model.num_heads=2", *overrides)
    tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, cfg.model.vocab_size)
    by_token = decode_tokens(model, tokens, model.init_cache(2, 64), 0)
    prefill, cache = model.extend(tokens[:, :37], model.init_cache(2, 64))
    after = decode_tokens(model, tokens, cache, 37)
    np.testing.assert_allclose(prefill, by_token[:, :37], atol=2e-5)
    np.testing.assert_allclose(after, by_token[:, 37:], atol=2e-5)
    full = model(tokens)  # no cache: exact attention
    gap = float(jnp.abs(by_token - full).max())
    assert 1e-6 < gap < 0.2 * float(jnp.abs(full).max())  # the cache is quantized, and close


def test_float_cache_dtypes_and_set_kv_cache_on_a_built_model():
    model, cfg = build("transformer")
    tokens = jax.random.randint(jax.random.key(2), (1, 20), 0, cfg.model.vocab_size)
    want = decode_tokens(model, tokens, model.init_cache(1, 20), 0)
    zoo.set_kv_cache(model, zoo.KVCacheFormat(dtype="bfloat16"))
    cache = model.init_cache(1, 20)
    assert cache[0].k.dtype == jnp.bfloat16
    np.testing.assert_allclose(decode_tokens(model, tokens, cache, 0), want, atol=0.05)
    zoo.set_kv_cache(model, zoo.KVCacheFormat(dtype="turbo_mse", bits=2, recent=0))
    assert model.init_cache(1, 20)[0].store.keys["codes"].dtype == jnp.uint8
    with pytest.raises(TypeError, match="takes a KVCacheFormat"):
        zoo.set_kv_cache(model, "int8")


def test_a_trained_models_perplexity_moves_under_one_percent_with_int8_and_4_bit_turbo(tmp_path):
    """60 steps of the tiny Transformer (head_dim 32, 64-token rows of the built-in corpus), held-out
    NLL over two batches read back through the quantized cache."""
    overrides = ["model.d_model=64", "model.num_heads=2", "train.steps=60", "checkpoint.every_steps=60"]
    cfg = zoo.load_config("configs/transformer/tiny.yaml", overrides=overrides)
    zoo.train(cfg, tmp_path)
    model, cfg = zoo.load_checkpoint(tmp_path)
    batches = make_data(cfg).heldout_batches(8, 2)

    def perplexity(fmt):
        zoo.set_kv_cache(model, fmt)
        return cached_perplexity(model, batches, cfg.data.seq_len)

    base = perplexity(zoo.KVCacheFormat())
    for fmt in (zoo.KVCacheFormat(dtype="int8", recent=0), zoo.KVCacheFormat(dtype="turbo_mse", bits=4, recent=0)):
        ppl = perplexity(fmt)
        assert ppl != base and abs(ppl / base - 1) < 0.01, (fmt, ppl, base)


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError, match="model.kv_cache.dtype: 'int3' is not allowed; choose one of model"):
        zoo.load_config("configs/transformer/tiny.yaml", overrides=["model.kv_cache.dtype=int3"])
    with pytest.raises(ConfigError, match="model.kv_cache.bits must be 1-4 for turbo_mse"):
        zoo.load_config("configs/transformer/tiny.yaml", overrides=["model.kv_cache.dtype=turbo_mse",
                                                                    "model.kv_cache.bits=8"])
    with pytest.raises(ConfigError, match=r"model.kv_cache.outliers \(8\) must be >= 0, and is a turbo_mse option"):
        zoo.load_config("configs/transformer/tiny.yaml", overrides=["model.kv_cache.dtype=int8",
                                                                    "model.kv_cache.outliers=8"])
    with pytest.raises(ConfigError, match="titans_mac caches one segment"):
        zoo.load_config("configs/titans/mac_tiny.yaml", overrides=["model.kv_cache.dtype=int8"])
    with pytest.raises(ConfigError, match="model.kv_cache.backend: 'triton' is not allowed"):
        zoo.load_config("configs/transformer/tiny.yaml", overrides=["model.kv_cache.backend=triton"])

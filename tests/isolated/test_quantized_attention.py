"""Attention over a quantized KV cache (kernels.quantized_attention, spec §3.6): the Pallas kernel
(interpret mode) and the xla form equal the dequantize-then-attend reference for every codec; the
error against exact attention stays within each codec's bound; the cache's content and every
query's reads do not depend on how the tokens were split into calls; bit accounting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.quantized_attention import cache as qcache
from kernels.quantized_attention.attention import IMPLEMENTATIONS, quantized_attention
from zoo.layers.attend import attend_at



def qkv(batch, seq, q_heads, kv_heads, d, seed=0, q_scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = q_scale * jax.random.normal(keys[0], (batch, seq, q_heads, d))
    return q, jax.random.normal(keys[1], (batch, seq, kv_heads, d)), jax.random.normal(keys[2], (batch, seq, kv_heads, d))


@functools.partial(jax.jit, static_argnames=("layout", "window", "backend"))
def call(layout, cache, q, k, v, pos, persistent, *, window, backend):
    """One call: its queries attend (positions pos ..), then its keys and values are written."""
    out = quantized_attention(q, pos + jnp.arange(q.shape[1]), cache, layout, k, v, pos, window=window,
                              persistent=persistent, backend=backend)
    return out, qcache.write(layout, cache, k, v, pos)


def run_in_pieces(layout, q, k, v, pieces, *, window=0, persistent=None, backend="xla"):
    """Feeds the tokens call by call (sizes `pieces`); returns the outputs of every call, concatenated."""
    cache, pos, outs = qcache.init(layout, q.shape[0], jnp.float32), 0, []
    for n in pieces:
        sl = slice(pos, pos + n)
        out, cache = call(layout, cache, q[:, sl], k[:, sl], v[:, sl], jnp.int32(pos), persistent, window=window,
                          backend=backend)
        outs.append(out)
        pos += n
    return jnp.concatenate(outs, axis=1), cache


def backend_cases(key_codec, value_codec, backend):
    """GQA (4 query heads on 2 KV heads), a 73-token cache written in three pieces, one a decode
    step (groups completing inside and across calls; the splitting invariance itself has its own
    test, test_reads_do_not_depend_on_how_tokens_are_split_into_calls); and a sliding window with persistent slots and a recent
    window over a store of two tiles (so the Pallas kernel splits the cache length)."""
    q, k, v = qkv(2, 73, 4, 2, 16, q_scale=2.0)
    layout = qcache.make_layout(key_codec, value_codec, kv_heads=2, head_dim=16, max_len=73)
    first, _ = run_in_pieces(layout, q, k, v, [36, 1, 36], backend=backend)  # two call sizes: two compiles
    q, k, v = qkv(1, 300, 2, 2, 16, seed=1)
    persistent = tuple(jax.random.normal(jax.random.key(s), (3, 2, 16)) for s in (5, 6))
    layout = qcache.make_layout(key_codec, value_codec, kv_heads=2, head_dim=16, max_len=300, window=150, recent=6)
    assert layout.slots == 256
    second, _ = run_in_pieces(layout, q, k, v, [149, 1, 149, 1], window=150, persistent=persistent, backend=backend)
    return first, second


@functools.cache
def reference_cases(key_codec, value_codec):
    return backend_cases(key_codec, value_codec, "reference")


# Both backends apply the codecs' own row functions (`codec.rows`; the Pallas kernel tile by tile),
# so these pairs cover every path: one part (int8), grouped scales (KIVI), the two-part prod + mse
# codecs and mixed-precision parts. The single-part TurboQuant pairs add no path (their rows are
# tests/kernels/test_codecs.py's; through the xla backend they run in the splitting test below).
CODEC_PAIRS = [("int8", "int8"), ("int4_kivi", "int4_kivi"), ("turbo_prod_3", "turbo_mse_3"),
               ("turbo_mse_1+5", "turbo_mse_2+4")]


@pytest.mark.parametrize("key_codec, value_codec, backend",
                         [pair + (backend,) for backend in ("xla", "pallas") for pair in CODEC_PAIRS])
def test_backends_equal_the_reference(key_codec, value_codec, backend):
    for got, want in zip(backend_cases(key_codec, value_codec, backend), reference_cases(key_codec, value_codec),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


# Relative L2 error of one decode step's output against exact attention (d = 64, 512 cached random
# Gaussian keys and values, logits of unit scale: nearly uniform attention, whose small average
# output magnifies relative error; measured 0.0093, 0.116, 0.144, 0.265, 0.266). The trained-model
# perplexity figures are in scripts/bench_quantized_attention.py.
ERROR_BOUNDS = {("int8", "int8"): 0.012, ("int4_kivi", "int4_kivi"): 0.14, ("turbo_mse_4", "turbo_mse_4"): 0.17,
                ("turbo_mse_3", "turbo_mse_3"): 0.3, ("turbo_prod_4", "turbo_mse_4"): 0.3}


@pytest.mark.parametrize("codecs", list(ERROR_BOUNDS))
def test_error_against_exact_attention_is_within_the_codecs_bound(codecs):
    q, k, v = qkv(2, 512, 4, 2, 64, seed=2)
    layout = qcache.make_layout(*codecs, kv_heads=2, head_dim=64, max_len=512)
    cache = qcache.write(layout, qcache.init(layout, 2, jnp.float32), k[:, :511], v[:, :511], 0)
    got = quantized_attention(q[:, 511:], jnp.array([511]), cache, layout, k[:, 511:], v[:, 511:], 511)
    exact = attend_at(q[:, 511:], k, v, q_pos=jnp.array([511]), k_pos=jnp.arange(512))
    error = float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact))
    assert 1e-4 < error < ERROR_BOUNDS[codecs]  # quantized (not exact), and within the bound


@pytest.mark.parametrize("key_codec, value_codec, recent, window", [
    ("int4_kivi", "int4_kivi", 0, 0), ("turbo_mse_3", "turbo_mse_3", 5, 0), ("int8", "int8", 0, 9),
    ("turbo_prod_2", "turbo_mse_2", 3, 40)])
def test_reads_do_not_depend_on_how_tokens_are_split_into_calls(key_codec, value_codec, recent, window):
    """A query at t reads keys older than t - R quantized, whatever call they came in: one call,
    pieces and token-by-token give the same outputs and the same stored codes."""
    q, k, v = qkv(1, 90, 2, 1, 16, seed=3, q_scale=2.0)
    layout = qcache.make_layout(key_codec, value_codec, kv_heads=1, head_dim=16, max_len=90, window=window,
                                recent=recent)
    one, cache_one = run_in_pieces(layout, q, k, v, [90], window=window)
    pieces, cache_pieces = run_in_pieces(layout, q, k, v, [7, 33, 1, 49], window=window)
    tokens, cache_tokens = run_in_pieces(layout, q, k, v, [1] * 90, window=window)
    np.testing.assert_allclose(pieces, one, atol=2e-6)
    np.testing.assert_allclose(tokens, one, atol=2e-6)
    for other in (cache_pieces, cache_tokens):
        for a, b in zip(jax.tree.leaves((cache_one.keys, cache_one.values, cache_one.slot_pos)),
                        jax.tree.leaves((other.keys, other.values, other.slot_pos)), strict=True):
            np.testing.assert_array_equal(a, b)
    exact = attend_at(q, k, v, q_pos=jnp.arange(90), k_pos=jnp.arange(90), window=window)
    r = layout.recent
    np.testing.assert_allclose(one[:, :r + 1], exact[:, :r + 1], atol=2e-6)  # every key within R: exact
    assert float(jnp.abs(one - exact).max()) > 1e-3  # the rest is quantized


def test_a_recent_window_longer_than_the_sequence_is_exact_attention():
    q, k, v = qkv(1, 40, 2, 2, 16, seed=4)
    layout = qcache.make_layout("turbo_mse_1", "turbo_mse_1", kv_heads=2, head_dim=16, max_len=40, recent=40)
    out, _ = run_in_pieces(layout, q, k, v, [17, 1, 22])
    np.testing.assert_allclose(out, attend_at(q, k, v, q_pos=jnp.arange(40), k_pos=jnp.arange(40)), atol=2e-6)


def test_store_bytes_per_token_count_codes_scales_and_norms():
    """Per token and KV head, keys + values at d = 64: int8 2 x (64 + 2) bytes; KIVI keys 32 bytes of
    codes + a float16 scale and zero per channel per 32 tokens (8), values 32 + 4; TurboQuant b
    bits x 64 + a float16 norm (prod adds the residual norm; its values are turbo_mse)."""
    def per_token(key_codec, value_codec):
        return qcache.stored_bytes_per_token(
            qcache.make_layout(key_codec, value_codec, kv_heads=2, head_dim=64, max_len=256))

    assert per_token("int8", "int8") == 2 * (64 + 2)
    assert per_token("int4_kivi", "int4_kivi") == (32 + 8) + (32 + 4)
    assert per_token("turbo_mse_4", "turbo_mse_4") == 2 * (32 + 2)
    assert per_token("turbo_prod_3", "turbo_mse_3") == (16 + 2 + 8 + 2) + (24 + 2)


def test_bad_input_names_the_problem():
    q, k, v = qkv(1, 4, 4, 2, 16)
    layout = qcache.make_layout("int8", "int8", kv_heads=2, head_dim=16, max_len=8)
    cache = qcache.init(layout, 1, jnp.float32)
    with pytest.raises(ValueError, match=r"k_new and v_new must be \[batch, Tq, kv_heads, d\]"):
        quantized_attention(q, jnp.arange(4), cache, layout, k[:, :2], v, 0)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'reference', 'xla', 'pallas'"):
        quantized_attention(q, jnp.arange(4), cache, layout, k, v, 0, backend="triton")
    with pytest.raises(ValueError, match="unknown KV-cache codec 'int2'"):
        qcache.make_layout("int2", "int8", kv_heads=2, head_dim=16, max_len=8)
    assert IMPLEMENTATIONS.auto == ("xla",)

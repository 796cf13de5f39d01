"""Every registered memory model at model level: decode == forward after a mid-chunk prefill,
pieces with carried caches == one call, causality, document resets, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ModelConfig

NAMES = sorted(n for n, info in zoo.registry.models().items() if info.uses_memory)
C = 4


def build(name, **kw):
    cfg = ModelConfig(name=name, vocab_size=53, d_model=16, num_layers=2, num_heads=2, sliding_window=6,
                      persistent_tokens=2, memory=zoo.registry.memory_config(name, chunk_size=C, expansion=2, **kw))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def tokens(seq, batch=2, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, seq), 0, 53, jnp.int32)


forward = nnx.jit(lambda m, t: m(t))
forward_seg = nnx.jit(lambda m, t, s: m(t, segment_ids=s))
extend = nnx.jit(lambda m, t, c: m.extend(t, c))


def stream(model, toks, cuts):
    cache = model.init_cache(toks.shape[0], toks.shape[1])
    out = []
    for lo, hi in zip([0] + cuts, cuts + [toks.shape[1]], strict=True):
        logits, cache = extend(model, toks[:, lo:hi], cache)
        out.append(logits)
    return jnp.concatenate(out, axis=1)


def test_memory_models_are_registered():
    assert {"gated_deltanet", "titans_lmm", "titans_mag", "titans_mal"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_decode_after_mid_chunk_prefill_equals_forward(name):
    model, toks = build(name), tokens(14)
    np.testing.assert_allclose(stream(model, toks, list(range(6, 14))), forward(model, toks), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_pieces_with_carried_cache_equal_one_call(name):
    model, toks = build(name), tokens(17)
    np.testing.assert_allclose(stream(model, toks, [3, 9]), forward(model, toks), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_perturbing_a_token_changes_no_earlier_output(name):
    model, toks = build(name), tokens(16)
    t = 9  # mid-chunk
    changed = toks.at[:, t].set((toks[:, t] + 7) % 53)
    a, b = forward(model, toks), forward(model, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :t]), np.asarray(b[:, :t]))
    assert float(jnp.abs(a[:, t:] - b[:, t:]).max()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_document_resets_equal_separate_sequences(name):
    model, toks = build(name), tokens(16, batch=1)
    seg = jnp.array([[1] * 8 + [2] * 8])  # the second document starts on the chunk grid
    packed = forward_seg(model, toks, seg)
    np.testing.assert_allclose(packed[:, :8], forward(model, toks[:, :8]), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[:, 8:], forward(model, toks[:, 8:]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_through_the_inner_loop(name):
    model, toks = build(name), tokens(12)
    graphdef, state = nnx.split(model)

    @jax.jit
    def grads(state):
        return jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(toks) ** 2))(state)

    g = nnx.to_pure_dict(grads(state))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    mixer = g["blocks"][0]["mixer"] if "mixer" in g["blocks"][0] else None
    if mixer is not None:  # the inner learning-rate gate and W_K only learn through the memory updates
        assert float(jnp.abs(mixer["lr_gate"]["bias"]).max()) > 0
        assert float(jnp.abs(mixer["k"]["kernel"]).max()) > 0
        assert all(float(jnp.abs(w).max()) > 0 for w in jax.tree.leaves(mixer["init_state"]))


def test_exact_matrix_memory_model_decodes_exactly():
    model, toks = build("titans_lmm", structure="matrix", semantics="exact"), tokens(11)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)


def test_mamba2_decay_gate_decodes_exactly_and_starts_in_its_init_range():
    """Gated DeltaNet's own decay (retention_gate=mamba2): log a = -A softplus(z + dt_bias)."""
    from zoo.memory import layer

    model, toks = build("gated_deltanet", retention_gate="mamba2"), tokens(11)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
    mixer = model.blocks[0].mixer
    a = np.exp(np.asarray(mixer.decay_rate.value))
    assert ((a >= layer.MAMBA2_A_RANGE[0]) & (a <= layer.MAMBA2_A_RANGE[1])).all()
    dt = np.asarray(jax.nn.softplus(mixer.forget_gate.bias.value))  # z = 0: the decay at the bias
    assert ((dt >= layer.MAMBA2_DT_FLOOR) & (dt <= layer.MAMBA2_DT_RANGE[1] * 1.001)).all()
    log_ret = mixer.gates(jnp.zeros((1, 1, 16))).log_retention[0, :, 0]
    np.testing.assert_allclose(log_ret, -a * dt, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_follows_the_forward_argmax(name):
    model, prompt = build(name), tokens(7)
    out = zoo.generate(model, prompt, max_new_tokens=5)
    np.testing.assert_array_equal(out[:, :7], prompt)
    np.testing.assert_array_equal(out[:, 7:], jnp.argmax(forward(model, out)[:, 6:11], axis=-1))

"""Memory-model variants beyond the registered defaults (exact matrix memory, the Mamba-2 decay
gate); every registered model's contract is in test_model_contract.py."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import zoo
from tests.zoo.models.test_model_contract import stream
from zoo.config import ModelConfig

C = 4


def build(name, **kw):
    cfg = ModelConfig(name=name, vocab_size=53, d_model=16, num_layers=2, num_heads=2, sliding_window=6,
                      persistent_tokens=2, memory=zoo.registry.memory_config(name, chunk_size=C, expansion=2, **kw))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def tokens(seq, batch=2, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, seq), 0, 53, jnp.int32)


forward = nnx.jit(lambda m, t: m(t))
forward_seg = nnx.jit(lambda m, t, s: m(t, segment_ids=s))


def test_exact_matrix_memory_model_decodes_exactly():
    model, toks = build("titans_lmm", structure="matrix", semantics="exact", max_grad_norm=0.0), tokens(11)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)


def test_mamba2_decay_gate_decodes_exactly_and_starts_in_its_init_range():
    """Gated DeltaNet's own decay (retention_gate=mamba2): log a = -A softplus(z + dt_bias)."""
    from zoo.memory import layer

    model, toks = build("gated_deltanet", retention_gate="mamba2"), tokens(11)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
    mixer = model.blocks[0].mixer
    a = np.exp(np.asarray(mixer.decay_rate.value))
    assert ((a >= layer.MAMBA2_A_RANGE[0]) & (a <= layer.MAMBA2_A_RANGE[1])).all()
    dt = np.asarray(jax.nn.softplus(mixer.gate_heads["log_retention"].bias.value))  # z = 0: the decay at the bias
    assert ((dt >= layer.MAMBA2_DT_FLOOR) & (dt <= layer.MAMBA2_DT_RANGE[1] * 1.001)).all()
    log_ret = mixer.gates(jnp.zeros((1, 1, 16)))["log_retention"][0, :, 0]
    np.testing.assert_allclose(log_ret, -a * dt, rtol=1e-5)


def test_a_feature_map_landed_by_registration_changes_the_key_size():
    """A feature map with dk != dv (phi(x) = [x, x^2], twice the head size) lands by registration
    alone: the exact matrix memory (its kernel, dk != dv) and the anchored MLP memory build with
    keys of size 2 * head_dim and decode exactly after a mid-chunk prefill."""
    from zoo.memory import parts

    if "test_square_features" not in parts.FEATURE_MAPS:
        parts.register_feature_map(parts.FeatureMap("test_square_features", lambda x: jnp.concatenate([x, x * x], -1),
                                                    out_dim=lambda d: 2 * d))
    toks = tokens(11)
    for memory in (dict(structure="matrix", semantics="exact", max_grad_norm=0.0), dict(structure="mlp")):
        model = build("titans_lmm", qk_activation="test_square_features", **memory)
        mixer = model.blocks[0].mixer
        assert mixer.init_state[0].value.shape[:2] == (2, 2 * mixer.head_dim)  # [heads, key_dim, ...]
        np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)


def test_a_learner_with_its_own_buffer_and_gate_lands_by_registration():
    """A learner that carries a state buffer that is not weight-shaped and reads a gate no other
    part has lands by registration alone: normalised GD, n_t = n_{t-1} + ||u_t||^2 (one scalar per
    head: `MemState.buffers["norm_sq"]`) and W_t = l_t W_{t-1} - rho_t gamma_t u_t / sqrt(n_t + 1),
    with gamma_t = sigmoid(z) a new registered gate. The engine's token loop equals a NumPy loop,
    the mixer grows a gate head for gamma that learns, and decoding after a mid-chunk prefill
    equals the forward (the buffer is carried through the mixer's state)."""
    from zoo.memory import engine, parts
    from zoo.memory.spec import MemorySpec

    def step(spec, buffers, grads, lr, gates):
        norm_sq = buffers["norm_sq"] + sum(jnp.sum(u * u) for u in grads)
        scale = lr * gates["test_step_scale"] * jax.lax.rsqrt(norm_sq + 1.0)
        return tuple(-scale * u for u in grads), {"norm_sq": norm_sq}

    if "test_normalized_gd" not in parts.LEARNERS:
        parts.register_gate(parts.Gate("test_step_scale", bias=lambda cfg: 0.0, value=lambda z, cfg: jax.nn.sigmoid(z)))
        parts.register_learner(parts.Learner(
            "test_normalized_gd", step=step, gates=("test_step_scale",),
            buffers=(parts.Buffer("norm_sq", init=lambda w: jnp.zeros((), jnp.float32)),)))

    # the engine against NumPy: exact rule, matrix memory, l2 objective (u = 2 k (k W - v)^T)
    spec = MemorySpec(structure="matrix", learner="test_normalized_gd", retention="scalar", semantics="exact")
    assert spec.gate_names == ("lr", "log_retention", "test_step_scale") and not engine.chunk_parallel(spec)
    t, d = 9, 4
    ks = jax.random.split(jax.random.key(0), 7)
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in jax.random.normal(ks[0], (2, t, d)))
    v = jax.random.normal(ks[1], (t, d))
    gates = dict(lr=jax.nn.sigmoid(jax.random.normal(ks[2], (t,))),
                 log_retention=-jax.nn.softplus(jax.random.normal(ks[3], (t,)) - 2.0),
                 test_step_scale=jax.nn.sigmoid(jax.random.normal(ks[4], (t,))))
    w0 = 0.3 * jax.random.normal(ks[5], (d, d))
    state, y = engine.chunk(spec, None, q, k, v, gates, init=(w0,))
    w, n, want = np.asarray(w0, np.float64), 0.0, []
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    g = {name: np.asarray(x, np.float64) for name, x in gates.items()}
    for i in range(t):
        u = 2.0 * np.outer(kn[i], kn[i] @ w - vn[i])
        n += float(np.sum(u * u))
        w = np.exp(g["log_retention"][i]) * w - g["lr"][i] * g["test_step_scale"][i] / np.sqrt(n + 1.0) * u
        want.append(qn[i] @ w)
    np.testing.assert_allclose(y, np.stack(want), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(state.weights[0], w, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(state.buffers["norm_sq"], n, rtol=1e-5)
    with np.testing.assert_raises_regex(ValueError, "missing: test_step_scale"):
        engine.chunk(spec, None, q, k, v, {name: x for name, x in gates.items() if name != "test_step_scale"}, init=(w0,))

    # the model: a gate head for gamma, gradients into it, decode == forward with the buffer carried
    model, toks = build("titans_lmm", structure="matrix", learner="test_normalized_gd"), tokens(11)
    mixer = model.blocks[0].mixer
    assert set(mixer.gate_heads) == {"lr", "log_retention", "test_step_scale"}
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
    graphdef, params = nnx.split(model)
    grads = jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(toks) ** 2))(params)
    gamma = nnx.to_pure_dict(grads)["blocks"][0]["mixer"]["gate_heads"]["test_step_scale"]
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(gamma))


def test_huber_objective_grows_a_learned_threshold_gate():
    """Yaad's Huber bias reads its threshold delta_t from a gate of its own (an objective's declared
    gate): the mixer grows its head, starting at huber_delta_init; decoding after a mid-chunk prefill
    equals the forward, and the threshold learns through the inner updates."""
    model, toks = build("titans_lmm", objective="huber", huber_delta_init=0.05), tokens(11)
    mixer = model.blocks[0].mixer
    assert "huber_delta" in mixer.gate_heads
    np.testing.assert_allclose(jax.nn.softplus(mixer.gate_heads["huber_delta"].bias.value), 0.05, rtol=1e-5)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
    graphdef, params = nnx.split(model)
    grads = nnx.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(toks) ** 2)))(params)
    delta = nnx.to_pure_dict(grads)["blocks"][0]["mixer"]["gate_heads"]["huber_delta"]
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(delta))


def test_samba_style_hybrid_alternates_memory_and_sliding_window_attention():
    """model.hybrid_attention = 2 (Miras-H, spec M10): blocks alternate memory, attention; the
    attention blocks keep their window; decoding after a mid-chunk prefill and packed documents
    equal the forward; models whose blocks attend already refuse it with a message naming the
    ones that take it."""
    import dataclasses

    import pytest

    from zoo.config import ConfigError, from_dict
    from zoo.models.memory_block import MemoryBlock
    from zoo.models.transformer import TransformerBlock

    cfg = dataclasses.replace(build("memora").cfg, num_layers=4, hybrid_attention=2)
    model = zoo.build_model(cfg, rngs=nnx.Rngs(0))
    assert [type(b) for b in model.blocks] == [MemoryBlock, TransformerBlock] * 2
    toks = tokens(13)
    reference = forward(model, toks)
    np.testing.assert_allclose(stream(model, toks, list(range(6, 13))), reference, atol=1e-5, rtol=1e-5)
    seg = jnp.array([[1] * 8 + [2] * 5, [1] * 4 + [2] * 9])
    alone = forward(model, jnp.stack([jnp.roll(toks[0], -8), jnp.roll(toks[1], -4)]))
    packed = forward_seg(model, toks, seg)
    np.testing.assert_allclose(packed[0, 8:], alone[0, :5], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[1, 4:], alone[1, :9], atol=1e-5, rtol=1e-5)
    plain = zoo.build_model(dataclasses.replace(cfg, hybrid_attention=0), rngs=nnx.Rngs(0))
    assert float(jnp.abs(forward(plain, toks) - reference).max()) > 1e-3
    with pytest.raises(ConfigError, match="has no hybrid form.*memora"):
        from_dict(dict(model=dict(name="titans_mag", hybrid_attention=2), data=dict(align_documents=16)))
    with pytest.raises(ConfigError, match="lifts keys to .* set model.memory.residual=false"):
        from_dict(dict(model=dict(name="omeganet", memory=dict(residual=True)), data=dict(align_documents=16)))
    with pytest.raises(ConfigError, match="hybrid_attention must be 0"):
        from_dict(dict(model=dict(name="memora", num_layers=2, hybrid_attention=3), data=dict(align_documents=16)))


def test_per_lag_window_gates_build_one_weight_per_lag_and_decode_exactly():
    """window_gates = lag (ATLAS spec §3.11): the mixer grows a [heads, window] gate head
    ("window_lag_weights", a registered gate with a width) whose weights start at window_gate_init,
    and decoding after a mid-chunk prefill equals the forward."""
    model, toks = build("omeganet", window_gates="lag"), tokens(11)
    head = model.blocks[0].mixer.gate_heads["window_lag_weights"]
    assert head.bias.value.shape == (2, 4)  # [heads, window]
    np.testing.assert_allclose(jax.nn.sigmoid(head.bias.value), 0.9, rtol=1e-5)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)


def test_miras_low_rank_channel_gates_decode_exactly_and_learn():
    """Yaad with Miras' gates (§5.4, spec §1.6): each from x through a rank-r bottleneck, the
    retention one decay per input channel of each MLP layer (keys: head_dim, hidden: 2 head_dim
    here). The model decodes exactly after a mid-chunk prefill and every gate parameter, the
    bottleneck included, gets a gradient through the inner updates."""
    cfg = ModelConfig(name="yaad", vocab_size=53, d_model=16, num_layers=1, num_heads=2,
                      memory=zoo.registry.memory_config("yaad", chunk_size=C, expansion=2, retention="channel",
                                                        gate_rank=3))
    model, toks = zoo.build_model(cfg, rngs=nnx.Rngs(0)), tokens(11)
    head = model.blocks[0].mixer.gate_heads["log_retention"]
    assert head.down.kernel.value.shape == (16, 3) and head.proj.kernel.value.shape == (3, 2, 8 + 16)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
    graphdef, state = nnx.split(model)
    grads = jax.jit(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(toks) ** 2)))(state)
    heads = nnx.to_pure_dict(grads)["blocks"][0]["mixer"]["gate_heads"]
    for name, gate in heads.items():
        for part in ("down", "proj"):
            assert float(jnp.abs(gate[part]["kernel"]).max()) > 0, (name, part)

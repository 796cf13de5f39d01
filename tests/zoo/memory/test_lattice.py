"""Lattice on the memory engine (zoo.memory.lattice, spec miras-lattice-trellis §2): the chunk form
equals the token loop with gradients at the chunk start and both equal the spec's tangent chunk form
written out in NumPy (outputs, states, outer gradients; ragged chunks), and so does the GLA chunk
form (`slot_norm_gla`, its own NumPy loop; gates of any sign; pieces and decoding); at C = 1 it is the per-token
Riemannian rule; each slot's update is orthogonal to it and slot norms never fall below 1 inside a
chunk; without the normalisation and the projection the rule is DeltaNet with beta = eta; the
mixer's latent codes have their own size. Decoding, pieces, documents and causality: the model
contract suite (tests/zoo/models/test_model_contract.py, `lattice`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.memory import MemorySpec, engine, initial_state
from zoo.memory.layer import MemoryMixer

M, D, T = 4, 6, 11  # slots, slot size, tokens (ragged against every chunk size)


def unit(w):
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def data(seed=0):
    rng = np.random.default_rng(seed)
    w0, q, k, v = (rng.normal(size=s) for s in ((M, D), (T, M), (T, M), (T, D)))
    return unit(w0), unit(q), unit(k), v, 0.2 * rng.uniform(size=T)


def spec(chunk, retention="slot_norm"):
    return MemorySpec(structure="matrix", objective="l2", learner="gd", retention=retention, semantics="anchored",
                      chunk_size=chunk, max_grad_norm=0.0)


def run(fn, sp, w0, q, k, v, lr):
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    gates = {"lr": f32(lr)}
    if fn is engine.chunk:
        return engine.chunk(sp, None, f32(q), f32(k), f32(v), gates, init=(f32(w0),))
    return fn(sp, initial_state(sp, (f32(w0),)), f32(q), f32(k), f32(v), gates)


def tangent_oracle(chunk, w0, q, k, v, lr):
    """§2.5 in float64: e_i, c_i against the chunk-start slots Ŝ_0, S_t = Ŝ_0 Diag(1 - sum eta k*c) +
    sum eta e k^T, each read through its own position's normalised slots, slots renormalised when a
    chunk ends (eta = 2 rho: the l2 objective is a sum of squares)."""
    s, ys = w0, []
    for start in range(0, T, chunk):
        s0, shrink, added = s, np.zeros(M), np.zeros((M, D))
        for t in range(start, min(start + chunk, T)):
            eta = 2 * lr[t]
            e = v[t] - k[t] @ s0
            shrink += eta * k[t] * (s0 @ e)
            added += eta * np.outer(k[t], e)
            s = s0 * (1 - shrink)[:, None] + added
            ys.append(q[t] @ unit(s))
        if t == start + chunk - 1:
            s = unit(s)
    return np.array(ys), s


def gla_oracle(chunk, w0, q, k, v, lr):
    """§2.5's GLA form in float64: e_i, c_i, a_i = 1 - eta_i k_i * c_i against the chunk-start slots
    Ŝ_0, then S_t = Diag(a_t) S_{t-1} + eta_t k_t e_t^T (rows = slots; nothing clipped), each read
    through its own position's normalised slots, slots renormalised when a chunk ends. Also returns
    every gate a_t."""
    s, ys, gates = w0, [], []
    for start in range(0, T, chunk):
        s0 = s
        for t in range(start, min(start + chunk, T)):
            eta = 2 * lr[t]
            e = v[t] - k[t] @ s0
            a = 1 - eta * k[t] * (s0 @ e)
            s = a[:, None] * s + eta * np.outer(k[t], e)
            ys.append(q[t] @ unit(s))
            gates.append(a)
        if t == start + chunk - 1:
            s = unit(s)
    return np.array(ys), s, np.array(gates)


FORMS = {"slot_norm": lambda *a: tangent_oracle(*a)[:2], "slot_norm_gla": lambda *a: gla_oracle(*a)[:2]}


@pytest.mark.parametrize("retention", list(FORMS))
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_chunk_form_equals_the_anchored_loop_and_the_spec_chunk_form(chunk, retention):
    """Both of §2.5's chunk forms: the tangent one (default) and the GLA one, each against its own
    NumPy loop of the spec's equations and the engine's token loop with gradients at the chunk start."""
    w0, q, k, v, lr = data()
    y_o, s_o = FORMS[retention](chunk, w0, q, k, v, lr)
    assert engine.chunk_parallel(spec(chunk, retention))
    for fn in (engine.chunk, engine.reference_chunked):
        state, y = run(fn, spec(chunk, retention), w0, q, k, v, lr)
        np.testing.assert_allclose(y, y_o, atol=2e-6)
        np.testing.assert_allclose(state.weights[0], s_o, atol=2e-6)


def test_gla_form_compounds_gates_of_any_sign_and_differs_from_the_tangent_form():
    """Gates above 1 and below 0 (a large step) are used as they are (§2.5: never clipped, never
    divided by): the chunk form still equals the spec's loop, and inside a chunk the two forms differ
    (at C = 1 they are the same rule: the test above)."""
    w0, q, k, v, _ = data(7)
    lr = np.full(T, 0.6)  # eta = 1.2: gates in [-0.72, 3.04]
    y_o, s_o, gates = gla_oracle(8, w0, q, k, v, lr)
    assert gates.max() > 1.5 and gates.min() < 0
    state, y = run(engine.chunk, spec(8, "slot_norm_gla"), w0, q, k, v, lr)
    np.testing.assert_allclose(y, y_o, atol=1e-5)
    np.testing.assert_allclose(state.weights[0], s_o, atol=1e-5)
    y_t, _ = tangent_oracle(8, w0, q, k, v, lr)
    assert np.abs(y_t[1:8] - y_o[1:8]).max() > 1e-2


def test_gla_form_in_pieces_and_decoded_equals_one_call():
    """A call split mid-chunk carries the running (unnormalised) slots, the anchor and the position;
    decoding token by token after a mid-chunk prefill continues it (§2.6)."""
    w0, q, k, v, lr = (jnp.asarray(a, jnp.float32) for a in data(7))
    sp = spec(4, "slot_norm_gla")
    whole, y = engine.chunk(sp, None, q, k, v, {"lr": lr}, init=(w0,))
    state, y1 = engine.chunk(sp, None, q[:6], k[:6], v[:6], {"lr": lr[:6]}, init=(w0,))
    state, y2 = engine.chunk(sp, state, q[6:9], k[6:9], v[6:9], {"lr": lr[6:9]})
    ys = [y1, y2]
    for t in range(9, T):
        state, yt = engine.decode_step(sp, state, q[t], k[t], v[t], {"lr": lr[t]})
        ys.append(yt[None])
    np.testing.assert_allclose(jnp.concatenate(ys), y, atol=2e-6)
    np.testing.assert_allclose(state.weights[0], whole.weights[0], atol=2e-6)


def test_one_token_chunks_are_the_riemannian_per_token_rule():
    """§2.2: s_i <- normalize(ŝ_i + eta k_i (I - ŝ_i ŝ_i^T) e), e = v - Ŝ^T k, read y = Ŝ^T q."""
    w0, q, k, v, lr = data(1)
    s, ys = w0, []
    for t in range(T):
        e = v[t] - k[t] @ s
        tangent = e[None, :] - s * (s @ e)[:, None]  # (I - ŝ_i ŝ_i^T) e for every slot
        s = unit(s + 2 * lr[t] * k[t][:, None] * tangent)
        ys.append(q[t] @ s)
    state, y = run(engine.chunk, spec(1), w0, q, k, v, lr)
    np.testing.assert_allclose(y, np.array(ys), atol=2e-6)
    np.testing.assert_allclose(state.weights[0], s, atol=2e-6)


def test_updates_are_orthogonal_to_each_slot_and_norms_stay_at_least_one():
    w0, q, k, v, lr = data(2)
    sp = spec(8)
    state = initial_state(sp, (jnp.asarray(w0, jnp.float32),))
    slots = [np.asarray(state.weights[0])]
    for t in range(8):  # one chunk: no renormalisation until its end
        state, _ = engine.decode_step(sp, state, *(jnp.asarray(a[t], jnp.float32) for a in (q, k, v)),
                                      {"lr": jnp.asarray(lr[t], jnp.float32)})
        slots.append(np.asarray(state.weights[0]))
    change = slots[1] - slots[0]  # the first write, at unit slots: orthogonal to each slot
    np.testing.assert_allclose(np.sum(change * slots[0], axis=-1), 0.0, atol=1e-6)
    assert np.abs(change).max() > 1e-3
    norms = np.linalg.norm(np.stack(slots[1:-1]), axis=-1)
    assert norms.min() >= 1 - 1e-6 and norms.max() > 1 + 1e-4  # the tangent form only grows them
    np.testing.assert_allclose(np.linalg.norm(slots[-1], axis=-1), 1.0, atol=1e-6)  # retracted at the chunk end


@pytest.mark.parametrize("retention", list(FORMS))
def test_outer_gradients_of_the_chunk_form_equal_the_loop(retention):
    w0, q, k, v, lr = data(3)
    sp = spec(4, retention)
    target = jnp.asarray(np.random.default_rng(9).normal(size=(T, D)), jnp.float32)

    def loss(fn, args):
        w0, q, k, v, lr = args
        gates = {"lr": lr}
        if fn is engine.chunk:
            _, y = engine.chunk(sp, None, q, k, v, gates, init=(w0,))
        else:
            _, y = fn(sp, initial_state(sp, (w0,)), q, k, v, gates)
        return jnp.sum((y - target) ** 2)

    args = tuple(jnp.asarray(a, jnp.float32) for a in (w0, q, k, v, lr))
    grads = [jax.jit(jax.grad(lambda a, fn=fn: loss(fn, a)))(args) for fn in (engine.chunk, engine.reference_chunked)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))
        assert np.isfinite(np.asarray(a)).all()


def test_without_normalisation_and_projection_it_is_deltanet():
    """§2.4: no view and no projection (a = 1): S <- (I - eta k k^T) S + eta k v^T, beta = eta."""
    w0, q, k, v, lr = data(4)
    s, ys = w0 * 0.5, []
    for t in range(T):
        eta = 2 * lr[t]
        s = s - eta * np.outer(k[t], k[t] @ s) + eta * np.outer(k[t], v[t])
        ys.append(q[t] @ s)
    _, y = run(engine.chunk, spec(1, retention="none"), w0 * 0.5, q, k, v, lr)
    np.testing.assert_allclose(y, np.array(ys), atol=2e-6)


def test_mixer_latent_codes_have_their_own_size():
    cfg = zoo.registry.memory_config("lattice", key_dim=12)
    mixer = MemoryMixer(32, 2, 8, cfg, rngs=nnx.Rngs(0))
    assert mixer.q.kernel.value.shape == (32, 2, 12) and mixer.v.kernel.value.shape == (32, 2, 8)
    (w0,) = mixer._initial_weights()
    assert w0.shape == (2, 12, 8)  # [heads, m slots, slot size]
    np.testing.assert_allclose(jnp.linalg.norm(w0, axis=-1), 1.0, atol=1e-6)
    y, _ = mixer(jax.random.normal(jax.random.key(0), (2, 20, 32)))
    assert y.shape == (2, 20, 32) and np.isfinite(np.asarray(y)).all()


def test_second_order_gradients_are_finite():
    """A Hessian-vector product of an outer loss through the inner (Riemannian) updates."""
    w0, q, k, v, lr = (jnp.asarray(a, jnp.float32) for a in data(5))
    sp = spec(4)

    def loss(keys):
        _, y = engine.chunk(sp, None, q, keys, v, {"lr": lr}, init=(w0,))
        return jnp.sum(y ** 2)

    _, hvp = jax.jvp(jax.grad(loss), (k,), (jnp.ones_like(k),))
    assert np.isfinite(np.asarray(hvp)).all() and float(jnp.abs(hvp).max()) > 0


def test_negative_key_dim_is_a_config_error():
    with pytest.raises(zoo.config.ConfigError, match="model.memory.key_dim must be >= 0"):
        zoo.load_config("configs/lattice/tiny.yaml", overrides=["model.memory.key_dim=-3"])

"""Trellis's memory (specs/miras-lattice-trellis.md §3 and the §4.5 contract): the two-pass chunk form
against an independent token loop written from §3.3-3.4 in the paper's orientation (K, V: [m, d]),
the gated-delta-rule reduction, carried state, decoding, causality, documents, outer gradients, the
mixer and the config checks. The registry-parametrized model contract covers the `trellis` model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kernels
import zoo
from zoo.config import ConfigError, load_config
from zoo.memory import compression, engine
from zoo.memory.spec import MemorySpec
from zoo.memory.trellis import initial_memory, two_pass
from zoo.models.trellis import TRELLIS_MEMORY

D, M = 5, 6  # head dim d, slots m (m != d catches a transposed read or a swapped axis)
SPEC = MemorySpec(**{k: v for k, v in TRELLIS_MEMORY.items() if k in {f.name for f in dataclasses.fields(MemorySpec)}})


def spec_with(c=4, phi="ln_silu", bilevel="full"):
    return dataclasses.replace(SPEC, chunk_size=c, compression_map=phi, bilevel=bilevel)


def inputs(t, heads=1, seed=0):
    """One batch row: q, k, v [1, H, t, D], alpha [1, H, t, M], log beta and gamma [1, H, t], K_0^T, V_0^T [H, D, M]."""
    ks = jax.random.split(jax.random.key(seed), 8)
    n = lambda i, shape, s=1.0: s * jax.random.normal(ks[i], shape)  # noqa: E731
    q, k, v = n(0, (1, heads, t, D)), n(1, (1, heads, t, D), 0.7), n(2, (1, heads, t, D), 0.7)
    alpha = n(3, (1, heads, t, M))
    log_beta = jax.nn.log_sigmoid(2.0 + n(4, (1, heads, t)))  # beta in (0.3, 1), mostly ~0.9
    gamma = jnp.broadcast_to(0.05 + 0.1 * jax.nn.sigmoid(n(5, (1, heads, 1))), (1, heads, t))
    init_key, init_value = n(6, (heads, D, M), D ** -0.5), n(7, (heads, D, M), D ** -0.5)
    return dict(q=q, k=k, v=v, alpha=alpha, log_beta=log_beta, gamma=gamma, init_key=init_key, init_value=init_value)


def chunk_form(spec, x, slot_map="ln_silu", segment_ids=None):
    return two_pass(spec, None, x["q"], x["k"], x["v"], x["alpha"], x["log_beta"], x["gamma"],
                    init_key=x["init_key"], init_value=x["init_value"], slot_map=slot_map, segment_ids=segment_ids)


def token_loop(x, c, phi="ln_silu", slot_map="ln_silu", bilevel="full"):
    """The spec's rule token by token, one head (batch row 0, head 0), K and V as [m, d]: codes at the
    chunk start (every c tokens), write, then read. Returns (y [t, D], K_T, V_T)."""
    phi_fn, f = compression.COMPRESSION_MAPS[phi], compression.SLOT_MAPS[slot_map]
    q, k, v, alpha = (x[n][0, 0] for n in ("q", "k", "v", "alpha"))
    beta, gamma = jnp.exp(x["log_beta"][0, 0]), x["gamma"][0, 0]
    big_k, big_v = x["init_key"][0].T, x["init_value"][0].T
    ys = []
    for t in range(q.shape[0]):
        if t % c == 0:
            anchor_k, anchor_v = big_k, big_v
        new = []
        for mem, anchor, w in ((big_k, anchor_k, k[t]), (big_v, anchor_v, v[t])):
            anchor = jax.lax.stop_gradient(anchor) if bilevel == "first_order" else anchor
            z = anchor @ w  # the pre-update code at the chunk start (the exact z_t when c = 1)
            out, vjp = jax.vjp(phi_fn, z)
            (u,) = vjp(out - alpha[t])  # u = J_phi(z)^T (phi(z) - alpha), spec §3.3
            new.append(beta[t] * mem - gamma[t] * jnp.outer(u, w))
        big_k, big_v = new
        r = f(big_k @ q[t])  # key pass read after write, then f
        ys.append(compression.ln_silu(big_v.T @ r))  # value pass: phi_out(V^T r)
    return jnp.stack(ys), big_k, big_v


def close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def test_codes_equal_the_analytic_ln_silu_gradient():
    # u = diag(silu'(z)) J_LN^T (phi(z) - alpha), J_LN = (I - 1 1^T / m - y y^T / m) / sigma (float64 NumPy)
    z = np.asarray(jax.random.normal(jax.random.key(3), (M,)), np.float64)
    alpha = np.asarray(jax.random.normal(jax.random.key(4), (M,)), np.float64)
    sig = 1 / (1 + np.exp(-z))
    s, ds = z * sig, sig * (1 + z * (1 - sig))
    centred = s - s.mean()
    sigma = np.sqrt(np.mean(centred ** 2) + compression.PHI_EPS)
    y = centred / sigma
    jac = (np.eye(M) - 1.0 / M - np.outer(y, y) / M) / sigma
    u = ds * (jac.T @ (y - alpha))
    grad = jax.grad(lambda out: compression.compression_loss(out[None], jnp.asarray(alpha, jnp.float32)[None],
                                                             spec=SPEC))(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), u, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("c, t", [(1, 9), (4, 13), (16, 21), (16, 7)])  # ragged tails; t < C
def test_chunk_form_equals_the_token_loop(c, t):
    x = inputs(t)
    spec = spec_with(c)
    assert engine.dual_form(spec) and engine.delta_kernel(spec) is None  # the chunk form, not the token loop
    memory, y = chunk_form(spec, x)
    y_ref, k_ref, v_ref = token_loop(x, c)
    close(y[0, 0], y_ref)
    close(memory.key.weights[0][0, 0], k_ref.T)  # the engine keeps W_K = K^T
    close(memory.value.weights[0][0, 0], v_ref.T)
    assert int(memory.key.pos[0, 0]) == int(memory.value.pos[0, 0]) == t % c


@pytest.mark.parametrize("phi", list(compression.COMPRESSION_MAPS))
@pytest.mark.parametrize("slot_map", list(compression.SLOT_MAPS))
def test_every_phi_and_f_equal_the_token_loop(phi, slot_map):
    x = inputs(10, seed=1)
    _, y = chunk_form(spec_with(4, phi), x, slot_map=slot_map)
    close(y[0, 0], token_loop(x, 4, phi, slot_map)[0])


# C = 4 over 11 tokens (two whole chunks and a ragged tail) covers the in-chunk algebra's gradients;
# other chunk sizes run the same code, their values are checked by test_chunk_form_equals_the_token_loop
# (C = 1, 4, 16).
@pytest.mark.parametrize("c, bilevel", [(4, "full"), (4, "first_order")])
def test_outer_gradients_equal_the_token_loop(c, bilevel):
    x = inputs(11, seed=2)
    weights = jax.random.normal(jax.random.key(9), (x["q"].shape[2], D))

    def loss_chunk(x):
        return jnp.sum(chunk_form(spec_with(c, bilevel=bilevel), x)[1][0, 0] * weights)

    def loss_loop(x):
        return jnp.sum(token_loop(x, c, bilevel=bilevel)[0] * weights)

    g_chunk, g_loop = jax.grad(loss_chunk)(x), jax.grad(loss_loop)(x)
    close(g_chunk, g_loop, tol=1e-4)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_chunk))


def test_bilevel_modes_differ_and_second_order_gradients_are_finite():
    x = inputs(12, seed=3)

    def loss(x, bilevel):
        return jnp.sum(chunk_form(spec_with(4, bilevel=bilevel), x)[1] ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    full, first = grad(x, "full"), grad(x, "first_order")
    assert float(jnp.abs(full["init_key"] - first["init_key"]).max()) > 1e-4  # u's dependence on K_0 is kept
    # a Hessian-vector product through the inner VJP (the outer gradient of the outer gradient)
    hvp = jax.jit(lambda x: jax.jvp(lambda k0: jax.grad(loss)({**x, "init_key": k0}, "full")["init_key"],
                                    (x["init_key"],), (jnp.ones_like(x["init_key"]),))[1])(x)
    assert np.isfinite(np.asarray(hvp)).all() and float(jnp.abs(hvp).max()) > 0


def test_a_forget_gate_that_erases_gives_finite_values_and_gradients():
    """spec §3.6 numerics: beta = 1e-5 makes P_16 underflow to 0 in fp32 even in log space; the decay
    products come from differences of cumulative logs masked before the exp, so nothing is inf or NaN."""
    x = inputs(16, seed=10)
    x = {**x, "log_beta": jnp.full_like(x["log_beta"], jnp.log(1e-5))}

    def loss(x):
        return jnp.sum(chunk_form(spec_with(16), x)[1] ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(x)
    assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    close(chunk_form(spec_with(16), x)[1][0, 0], token_loop(x, 16)[0])


def test_anchored_chunks_differ_from_the_exact_recurrence():
    x = inputs(12, seed=4)
    _, y4 = chunk_form(spec_with(4), x)
    assert float(jnp.abs(y4[0, 0] - token_loop(x, 1)[0]).max()) > 1e-3  # the chunk size is part of the model


def test_identity_phi_at_chunk_one_is_the_gated_delta_rule():
    """spec §3.3: with phi = id, M_t = M_{t-1}(beta I - gamma w w^T) + gamma alpha w^T, the gated delta rule
    S_t = a (I - b k k^T) S + b k v^T with a = beta, b = gamma / beta, v = beta alpha (S = M^T)."""
    t = 9
    x = inputs(t, seed=5)
    memory, y = chunk_form(spec_with(1, "identity"), x)
    beta, gamma = jnp.exp(x["log_beta"]), x["gamma"]

    def gdn(keys, init, t_end, queries=None):  # [1, t_end, 1, D] layout of the kernels
        lay = lambda a: jnp.moveaxis(a[:, :, :t_end], 1, 2)  # noqa: E731
        qs = lay(x["q"] if queries is None else queries)
        return kernels.gated_delta_rule(qs, lay(keys), lay(beta[..., None] * x["alpha"]), lay(gamma / beta),
                                        lay(x["log_beta"]), scale=1.0, initial_state=init[None],
                                        output_final_state=True, backend="reference")

    y_hat, k_final = gdn(x["k"], x["init_key"], t)
    _, v_final = gdn(x["v"], x["init_value"], t)
    close(memory.key.weights[0][0], k_final[0])
    close(memory.value.weights[0][0], v_final[0])
    # the value reads: V_t^T r_t from the gated delta rule's state after every prefix
    r = compression.ln_silu(y_hat[0, :, 0])  # [t, M]
    y_gdn = [compression.ln_silu(gdn(x["v"], x["init_value"], n + 1)[1][0, 0] @ r[n]) for n in range(t)]
    close(y[0, 0], jnp.stack(y_gdn))


# pieces off the chunk grid and one-token steps, with the carried memories checked too (the model
# contract checks the logits of pieces [6, 7, 13, 14] and of decoding after a prefill of 6)
@pytest.mark.parametrize("cuts", [[3, 4, 5, 6, 11]])
def test_pieces_and_decoding_with_carried_state_equal_one_call(cuts):
    spec, t = spec_with(4), 15
    x = inputs(t, heads=2, seed=6)
    full, y_full = chunk_form(spec, x)
    memory, ys = None, []
    for lo, hi in zip([0] + cuts, cuts + [t], strict=True):
        piece = {n: (a[:, :, lo:hi] if a.ndim >= 3 and n not in ("init_key", "init_value") else a)
                 for n, a in x.items()}
        memory, y = two_pass(spec, memory, piece["q"], piece["k"], piece["v"], piece["alpha"], piece["log_beta"],
                             piece["gamma"], init_key=x["init_key"], init_value=x["init_value"])
        ys.append(y)
    close(jnp.concatenate(ys, axis=2), y_full)
    close(memory, full)  # weights, the chunk anchors K_0 / V_0 and the position mod C


def test_decode_from_the_initial_memory_equals_the_forward():
    spec, t = spec_with(4), 6
    x = inputs(t, seed=7)
    _, y_full = chunk_form(spec, x)
    memory = initial_memory(spec, x["init_key"], x["init_value"], 1)
    for i in range(t):
        step = {n: a[:, :, i:i + 1] for n, a in x.items() if n not in ("init_key", "init_value")}
        memory, y = two_pass(spec, memory, **step, init_key=x["init_key"], init_value=x["init_value"])
        close(y[0, 0, 0], y_full[0, 0, i])


def test_causal_within_a_chunk():
    spec, t = spec_with(8), 16
    x = inputs(t, seed=8)
    _, y = chunk_form(spec, x)
    for name in ("q", "k", "v", "alpha"):
        changed = {**x, name: x[name].at[:, :, 5].add(1.0)}
        _, y2 = chunk_form(spec, changed)
        np.testing.assert_array_equal(np.asarray(y[:, :, :5]), np.asarray(y2[:, :, :5]))
        assert float(jnp.abs(y[:, :, 5:] - y2[:, :, 5:]).max()) > 0, name


def test_documents_restart_from_the_initial_memories():
    spec, t = spec_with(4), 14
    x = inputs(t, seed=9)
    seg = jnp.array([[1] * 8 + [2] * 5 + [0]])  # doc 2 on the grid; one padding token at the end
    memory, y = chunk_form(spec, x, segment_ids=seg)
    close(memory.key.weights[0][0], x["init_key"])  # a call that ends in padding returns the fresh state
    close(memory.value.weights[0][0], x["init_value"])
    for lo, hi in [(0, 8), (8, 13)]:
        alone = {n: (a[:, :, lo:hi] if n not in ("init_key", "init_value") else a) for n, a in x.items()}
        close(y[:, :, lo:hi], chunk_form(spec, alone)[1])
    _, y_pert = chunk_form(spec, {**x, "k": x["k"].at[:, :, 3].add(1.0)}, segment_ids=seg)
    close(y_pert[:, :, 8:13], y[:, :, 8:13])


def test_transposed_read_is_checked_by_the_spec():
    with pytest.raises(ValueError, match="transposed"):
        MemorySpec(structure="mlp", read="transposed")
    with pytest.raises(ValueError, match="compression_map"):
        MemorySpec(objective="compression", compression_map="softmax")
    assert MemorySpec.of(zoo.registry.memory_config("trellis")).read == "forward"  # not a config field


def tiny_model(**memory):
    cfg = zoo.config.ModelConfig(name="trellis", vocab_size=31, d_model=16, num_layers=1, num_heads=2,
                                 memory=zoo.registry.memory_config("trellis", chunk_size=4, **memory))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def test_mixer_gradients_reach_every_outer_parameter():
    model = tiny_model(slots=3)  # m != d (8)
    toks = jax.random.randint(jax.random.key(0), (2, 11), 0, 31)
    graphdef, state = nnx.split(model)
    g = nnx.to_pure_dict(jax.jit(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(toks) ** 2)))(state))
    mixer = g["blocks"][0]["mixer"]
    for name in ("q", "k", "v", "alpha", "beta", "gamma", "init_key", "init_value", "conv", "gate", "o", "out_norm"):
        leaves = jax.tree.leaves(mixer[name])
        assert all(np.isfinite(a).all() for a in leaves) and all(float(np.abs(a).max()) > 0 for a in leaves), name
    assert model.blocks[0].mixer.init_key.value.shape == (2, 8, 3)


@pytest.mark.parametrize("remat", ["block", "memory"])
def test_remat_policies_same_gradients(remat):
    """The 125M config trains with remat: block (a scan over stacked layers); both policies give the
    gradients of no remat on packed documents."""
    toks = jax.random.randint(jax.random.key(2), (2, 16), 0, 31)
    seg = jnp.repeat(jnp.array([[1, 2], [1, 1]]), 8, axis=1)

    def grads(policy):
        cfg = zoo.config.ModelConfig(name="trellis", vocab_size=31, d_model=16, num_layers=2, num_heads=2,
                                     remat=policy, memory=zoo.registry.memory_config("trellis", chunk_size=4))
        graphdef, state = nnx.split(zoo.build_model(cfg, rngs=nnx.Rngs(0)))
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(toks, segment_ids=seg) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(state)

    for a, b in zip(jax.tree.leaves(grads("none")), jax.tree.leaves(grads(remat)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_mixer_initial_gates():
    mixer = tiny_model().blocks[0].mixer
    x = jnp.zeros((1, 3, 16))
    _, _, _, alpha, log_beta, gamma, _ = mixer.inputs(x)
    close(jnp.exp(log_beta), jnp.full((1, 2, 3), 0.99), tol=1e-6)  # beta starts at 1 - forget_init
    close(gamma, jnp.full((1, 2, 3), 0.01), tol=1e-6)  # gamma starts at step_init
    assert alpha.shape == (1, 2, 3, 8)  # m = the head dim by default
    std = float(jnp.std(mixer.init_key.value))
    assert 0.25 < std < 0.5  # N(0, 1/d), d = 8: non-zero initial memories


def test_flops_count_both_memories_but_not_their_initial_states():
    from zoo.training.flops import flops_per_token

    model = tiny_model(slots=3)  # 2 heads of d = 8, m = 3, C = 4
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    weights = sum(x.size for path, x in leaves if x.ndim >= 2 and "init_key" not in str(path)
                  and "init_value" not in str(path))
    memory = 2 * 2 * (3 * 2 * 3 * 8 + 2 * 4 * (8 + 3))  # heads x memories x (code, write, read + chunk terms)
    assert flops_per_token(model, 16) == 3 * (2 * weights + memory)


def test_config_validation_names_the_key():
    base = ["model.name=trellis", "data.align_documents=16"]
    for override, match in [("model.memory.compression_map=softmax", "compression_map"),
                            ("model.memory.slot_map=softmax", "slot_map"),
                            ("model.memory.slots=-1", "slots"),
                            ("model.memory.step_init=0", "step_init"),
                            ("model.memory.forget_init=1.0", "forget_init"),
                            ("model.memory.chunk_size=0", "chunk_size"),
                            ("model.memory.learner=momentum", "not Trellis's memory"),
                            ("model.memory.qk_activation=identity", "raw keys")]:
        with pytest.raises(ConfigError, match=match):
            load_config("configs/trellis/tiny.yaml", overrides=base + [override])
    cfg = load_config("configs/trellis/tiny.yaml", overrides=["model.memory.compression_map=identity"])
    assert cfg.model.memory.objective == "compression" and cfg.model.memory.chunk_size == 16


def test_125m_config_loads():
    cfg = load_config("configs/trellis/trellis_125m.yaml")
    assert cfg.model.name == "trellis" and cfg.model.memory.chunk_size == 16
    assert cfg.model.memory.compression_map == cfg.model.memory.slot_map == "ln_silu"

"""The memory engine's test contract (specs/miras-lattice-trellis.md §4.5) on one head."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.memory import engine, parts
from zoo.memory.spec import MemorySpec
from zoo.memory.state import initial_state
from zoo.memory.retention import channel_width
from zoo.memory.structures import init_weights, layer_shapes

DK = DV = 6
SPECS = {
    "matrix_l2_momentum": MemorySpec(structure="matrix", learner="momentum", retention="scalar"),
    "matrix_l2_channel_gd": MemorySpec(structure="matrix", learner="gd", retention="channel"),
    "matrix_dot_exact": MemorySpec(structure="matrix", objective="dot", semantics="exact"),
    "matrix_l2_exact_kernel": MemorySpec(structure="matrix", semantics="exact"),
    "matrix_l2_exact_gd_kernel": MemorySpec(structure="matrix", semantics="exact", learner="gd", retention="none"),
    "matrix_gdn_kernel": MemorySpec(structure="matrix", semantics="exact", learner="gd", gradient_at="retained"),
    "matrix_gdn_momentum_loop": MemorySpec(structure="matrix", semantics="exact", gradient_at="retained"),
    "mlp2_residual_momentum": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True),
    "mlp1_gd_no_retention": MemorySpec(structure="mlp", depth=1, residual=False, learner="gd", retention="none"),
    "mlp2_dot_channel_gd": MemorySpec(structure="mlp", depth=2, expansion=2, objective="dot", learner="gd",
                                      retention="channel"),  # one decay per input channel of each layer
    "mlp2_exact_token_loop": MemorySpec(structure="mlp", depth=2, expansion=2, semantics="exact"),
    "mlp2_dot_exact_token_loop": MemorySpec(structure="mlp", depth=2, expansion=2, objective="dot",
                                            semantics="exact"),  # its gradient depends on W: no dual form
    "mlp2_first_order_silu": MemorySpec(structure="mlp", depth=2, expansion=2, bilevel="first_order",
                                        activation="silu"),
    "mlp2_clipped_momentum": MemorySpec(structure="mlp", depth=2, expansion=2, max_grad_norm=1.0),
    "mlp2_ln_huber_gd": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, output_norm=True,
                                   objective="huber", learner="gd"),  # the Miras (Yaad) memory
    "mlp2_moneta_channel": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, output_norm=True,
                                      objective="lp", retention="lq_channel", learner="gd"),  # the state per
    # position, one decay per input channel of each layer (the scalar lq: test_moneta_lq_retention_...)
    "mlp2_memora": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, objective="l2",
                              retention="kl", learner="gd"),  # LN off: it amplifies fp32 noise ~100x on
    # a softmax MLP's near-uniform outputs, beyond these tests' tolerance (Yaad's and Moneta's cover LN)
    # the Omega window (ATLAS): OmegaNet's deep memory; a window longer than the chunk (P > C);
    # SWLA's weight-free dot product (exact semantics run the dual form); ATLAS's Muon (token by token)
    "mlp2_omega_window3_gd": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, learner="gd",
                                        window=3, max_grad_norm=1.0),
    "matrix_l2_window6_momentum": MemorySpec(structure="matrix", window=6),
    "matrix_dot_window2_exact": MemorySpec(structure="matrix", objective="dot", semantics="exact", learner="gd",
                                           window=2),
    "mlp2_window3_muon": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, learner="muon", window=3),
    "mlp2_lag_window3_momentum": MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, window=3,
                                            window_gates="lag"),  # the spec's per-lag gamma
    # Atlas++'s gated MLP (a structure whose layers are not a chain): the dual read and, with Muon's
    # write, the per-position read go through its body
    "gated_momentum": MemorySpec(structure="gated_mlp", expansion=2, residual=True),
    "gated_window3_muon": MemorySpec(structure="gated_mlp", expansion=2, learner="muon", window=3),
}  # every registered objective and learner: test_grid_of_registered_parts_equals_its_oracle


def with_chunk(spec, c):
    return dataclasses.replace(spec, chunk_size=c)


def inputs(spec, t, seed=0):
    ks = jax.random.split(jax.random.key(seed), 8)
    norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q = norm(jax.random.normal(ks[0], (t, DK)))
    k = norm(jax.random.normal(ks[1], (t, DK)))
    v = jax.random.normal(ks[2], (t, DV))
    channel = parts.retention(spec.retention).gate == "channel"
    ret_shape = (t, channel_width(layer_shapes(spec, DK, DV))) if channel else (t,)
    log_ret = -jax.nn.softplus(jax.random.normal(ks[3], ret_shape) - 2.0)
    if spec.retention == "none":
        log_ret = jnp.zeros(ret_shape)
    gates = dict(lr=0.5 * jax.nn.sigmoid(jax.random.normal(ks[4], (t,))), log_retention=log_ret,
                 log_momentum=-jax.nn.softplus(-(jax.random.normal(ks[5], (t,)) + 1.0)),
                 huber_delta=jax.nn.softplus(2.0 * jax.random.normal(ks[5], (t,))),  # both Huber branches
                 window_weight=jax.nn.sigmoid(2.0 * jax.random.normal(ks[3], (t,))),
                 window_lag_weights=jax.nn.sigmoid(2.0 * jax.random.normal(ks[4], (t, spec.window))),
                 muon_lr=0.05 * jax.nn.sigmoid(2.0 * jax.random.normal(ks[7], (t,))))  # Muon's eta_t
    init = init_weights(spec, ks[6], DK, DV)  # an empty memory: the last layer is zero
    last = init[-1] + 0.3 * jax.random.normal(ks[7], init[-1].shape)
    init = init[:-1] + (last,)  # a non-empty learned initial state
    return init, q, k, v, gates


def close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


# The chunk size only changes anchored memories (exact ones take it as a grid: their chunk form is
# checked against the step loop in test_chunk_equals_its_oracle); at C = 1 anchored is exact.
@pytest.mark.parametrize("name", [name for name, spec in SPECS.items() if spec.semantics == "anchored"])
def test_chunk_size_one_equals_exact_step_loop(name):
    spec = with_chunk(SPECS[name], 1)
    init, q, k, v, g = inputs(spec, 9)
    st_c, y_c = engine.chunk(spec, None, q, k, v, g, init=init)
    st_s, y_s = engine.step_loop(spec, initial_state(spec, init), q, k, v, g)
    close(y_c, y_s)
    close(st_c.weights, st_s.weights)
    close(st_c.buffers, st_s.buffers)


@pytest.mark.parametrize("name, t", [(name, 13) for name in SPECS] + [
    ("mlp2_residual_momentum", 3), ("matrix_l2_momentum", 16),  # whole chunks: kernels.anchored_memory
    ("mlp2_residual_momentum", 16), ("mlp1_gd_no_retention", 12)])
def test_chunk_equals_its_oracle(name, t):
    spec = with_chunk(SPECS[name], 4)
    init, q, k, v, g = inputs(spec, t)
    st_c, y_c = engine.chunk(spec, None, q, k, v, g, init=init)
    oracle = engine.step_loop if spec.semantics == "exact" else engine.reference_chunked
    st_r, y_r = oracle(spec, initial_state(spec, init), q, k, v, g)
    close(y_c, y_r)
    close((st_c.weights, st_c.buffers), (st_r.weights, st_r.buffers))
    if spec.semantics == "anchored":  # the anchor only means something for anchored memories
        close(st_c.anchor, st_r.anchor)
    assert int(st_c.pos) == int(st_r.pos) == t % 4


def test_exact_kernel_path_is_used_and_differs_from_anchored():
    exact = with_chunk(SPECS["matrix_l2_exact_kernel"], 4)
    assert engine.delta_kernel(exact) == "momentum_delta_rule" and engine.chunk_parallel(exact)
    # a clipped step depends on ||u_t|| at W_{t-1}, which the kernels do not compute: the token loop
    assert engine.delta_kernel(dataclasses.replace(exact, max_grad_norm=1.0)) is None
    init, q, k, v, g = inputs(exact, 12)
    _, y_exact = engine.chunk(exact, None, q, k, v, g, init=init)
    _, y_anchor = engine.chunk(dataclasses.replace(exact, semantics="anchored"), None, q, k, v, g, init=init)
    assert float(jnp.abs(y_anchor - y_exact).max()) > 1e-4


def test_anchored_differs_from_exact():
    spec = with_chunk(SPECS["mlp2_residual_momentum"], 4)
    init, q, k, v, g = inputs(spec, 12)
    _, y_anchor = engine.chunk(spec, None, q, k, v, g, init=init)
    _, y_exact = engine.step_loop(spec, initial_state(spec, init), q, k, v, g)
    assert float(jnp.abs(y_anchor - y_exact).max()) > 1e-3


@pytest.mark.parametrize("name", SPECS)
def test_pieces_and_decoding_after_a_mid_chunk_prefill_equal_one_call(name):
    """A prefill of 6 tokens ends mid-chunk; from its state, pieces of 1 and 8 (off the chunk grid)
    and, separately, one decode step per token across two chunk boundaries equal one call."""
    spec = with_chunk(SPECS[name], 4)
    init, q, k, v, g = inputs(spec, 15)
    st_full, y_full = engine.chunk(spec, None, q, k, v, g, init=init)
    sl = lambda lo, hi: (lambda x: x[lo:hi])  # noqa: E731
    prefill, y_pre = engine.chunk(spec, None, q[:6], k[:6], v[:6], jax.tree.map(sl(0, 6), g), init=init)
    state, ys = prefill, [y_pre]
    for lo, hi in [(6, 7), (7, 15)]:
        state, y = engine.chunk(spec, state, q[lo:hi], k[lo:hi], v[lo:hi], jax.tree.map(sl(lo, hi), g), init=init)
        ys.append(y)
    close(jnp.concatenate(ys), y_full)
    close((state.weights, state.buffers, state.anchor), (st_full.weights, st_full.buffers, st_full.anchor))
    assert int(state.pos) == int(st_full.pos)
    state, ys = prefill, [y_pre]
    for t in range(6, 15):
        state, y = engine.decode_step(spec, state, q[t], k[t], v[t], engine.gates_at(g, t))
        ys.append(y[None])
    close(jnp.concatenate(ys), y_full)
    close((state.weights, state.buffers), (st_full.weights, st_full.buffers))


@pytest.mark.parametrize("name", ["matrix_l2_momentum", "mlp2_residual_momentum", "matrix_dot_exact",
                                  "matrix_l2_exact_kernel", "mlp2_omega_window3_gd", "matrix_l2_window6_momentum"])
def test_documents_reset_to_initial_state(name):
    spec = with_chunk(SPECS[name], 4)
    init, q, k, v, g = inputs(spec, 14)
    seg = jnp.array([1] * 8 + [2] * 5 + [0])  # doc 2 starts on the grid; a padding token at the end
    st, y = engine.chunk(spec, None, q, k, v, g, init=init, segment_ids=seg)
    close(st.weights, init)  # a call that ends in padding returns the fresh state
    sl = lambda lo, hi: (lambda x: x[lo:hi])  # noqa: E731
    _, y1 = engine.chunk(spec, None, q[:8], k[:8], v[:8], jax.tree.map(sl(0, 8), g), init=init)
    st2, y2 = engine.chunk(spec, None, q[8:13], k[8:13], v[8:13], jax.tree.map(sl(8, 13), g), init=init)
    close(y[:8], y1)
    close(y[8:13], y2)
    # perturbing document 1 leaves document 2 unchanged
    _, y_pert = engine.chunk(spec, None, q, k.at[3].set(-k[3]), v.at[5].add(1.0), g, init=init, segment_ids=seg)
    close(y_pert[8:13], y[8:13])


@pytest.mark.parametrize("name", ["matrix_l2_exact_kernel", "matrix_l2_exact_gd_kernel", "matrix_gdn_kernel"])
def test_exact_kernel_runs_with_document_resets_anywhere(name):
    """Training passes segment ids: the exact delta rule must still run its kernel (its UT solve in
    the jaxpr), with documents starting mid-chunk, and equal the token loop (open-engine issue,
    item 3: it used to fall back to the loop)."""
    spec = with_chunk(SPECS[name], 4)
    init, q, k, v, g = inputs(spec, 15)
    seg = jnp.array([0] + [1] * 5 + [2] + [3] * 6 + [0] * 2)  # starts at 1, 6, 7 (mid-chunk); padding at both ends
    run = lambda q, k, v, g: engine.chunk(spec, None, q, k, v, g, init=init, segment_ids=seg)  # noqa: E731
    assert "triangular_solve" in str(jax.make_jaxpr(run)(q, k, v, g))
    st, y = run(q, k, v, g)
    st_r, y_r = engine.step_loop(spec, initial_state(spec, init), q, k, v, g, segment_ids=seg)
    real = np.asarray(seg > 0)
    close(np.asarray(y)[real], np.asarray(y_r)[real])
    close((st.weights, st.buffers), (st_r.weights, st_r.buffers))  # trailing padding: the fresh state
    close(st.weights, init)
    _, y3 = engine.chunk(spec, None, q[7:13], k[7:13], v[7:13], jax.tree.map(lambda x: x[7:13], g), init=init)
    close(y[7:13], y3)  # a document packed mid-chunk == the document alone


@pytest.mark.parametrize("name", ["matrix_l2_momentum", "mlp2_residual_momentum"])
def test_causal_within_chunk(name):
    spec = with_chunk(SPECS[name], 8)
    init, q, k, v, g = inputs(spec, 16)
    _, y = engine.chunk(spec, None, q, k, v, g, init=init)
    _, y2 = engine.chunk(spec, None, q, k.at[11].set(-k[11]), v.at[11].add(2.0), g, init=init)
    np.testing.assert_array_equal(np.asarray(y[:11]), np.asarray(y2[:11]))
    assert float(jnp.abs(y[11:] - y2[11:]).max()) > 1e-4


def test_token_gradient_matches_closed_form():
    spec = SPECS["matrix_l2_momentum"]
    init, q, k, v, g = inputs(spec, 2)
    (u,) = engine.token_gradient(spec, init, k[0], v[0], {})
    np.testing.assert_allclose(u, 2 * jnp.outer(k[0], k[0] @ init[0] - v[0]), atol=1e-6)


def test_gated_mlp_is_atlas_pp_memory_and_its_token_gradients():
    """Atlas++ (Eq. 43): M(z) = z + (gelu(z W_2) * (z W_3)) W_1; its per-token gradient is the
    outer product of each matrix's input and delta (z for W_2 and W_3, the gated hidden for W_1)."""
    spec = SPECS["gated_momentum"]
    init, q, k, v, g = inputs(spec, 2)
    w2, w3, w1 = (np.asarray(w, np.float64) for w in init)
    z = np.asarray(k[0], np.float64)
    gelu = lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))  # noqa: E731
    hidden = gelu(z @ w2) * (z @ w3)
    np.testing.assert_allclose(engine.read(spec, init, k[0]), z + hidden @ w1, atol=1e-6)
    u2, u3, u1 = engine.token_gradient(spec, init, k[0], v[0], {})
    err = 2.0 * (z + hidden @ w1 - np.asarray(v[0], np.float64))  # d||M(z) - v||^2 / dM
    d_hidden = w1 @ err
    dgelu = np.vectorize(lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) + x * math.exp(-0.5 * x * x)
                         / math.sqrt(2.0 * math.pi))
    np.testing.assert_allclose(u1, np.outer(hidden, err), atol=1e-5)
    np.testing.assert_allclose(u2, np.outer(z, d_hidden * (z @ w3) * dgelu(z @ w2)), atol=1e-5)
    np.testing.assert_allclose(u3, np.outer(z, d_hidden * gelu(z @ w2)), atol=1e-5)


@pytest.mark.parametrize("name", ["matrix_l2_momentum", "mlp2_residual_momentum", "mlp2_first_order_silu",
                                  "mlp2_clipped_momentum", "mlp2_omega_window3_gd",
                                  "mlp2_dot_channel_gd",  # per-layer channel decays
                                  "gated_window3_muon"])
def test_outer_gradients_equal_the_reference_loop(name):
    spec = with_chunk(SPECS[name], 4)
    init, q, k, v, g = inputs(spec, 10)
    w = jax.random.normal(jax.random.key(9), (10, DV))

    def loss(fn, init, q, k, v, g):
        st, y = fn(init, q, k, v, g)
        return jnp.sum(y * w) + sum(jnp.sum(x) for x in st.weights)

    par = lambda i, q, k, v, g: engine.chunk(spec, None, q, k, v, g, init=i)  # noqa: E731
    ref = lambda i, q, k, v, g: engine.reference_chunked(spec, initial_state(spec, i), q, k, v, g)  # noqa: E731
    g_par = jax.grad(lambda *a: loss(par, *a), argnums=(0, 1, 2, 3, 4))(init, q, k, v, g)
    g_ref = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2, 3, 4))(init, q, k, v, g)
    close(g_par, g_ref, tol=5e-5)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g_par))
    assert float(jnp.abs(g_par[4]["lr"]).max()) > 0  # the gates learn through the inner loop


def test_second_order_gradient_matches_finite_differences():
    spec = with_chunk(SPECS["mlp2_residual_momentum"], 4)
    init, q, k, v, g = inputs(spec, 8)
    w = jax.random.normal(jax.random.key(3), (8, DV))
    f = lambda scale: jnp.sum(engine.chunk(spec, None, q, k * scale, v, g, init=init)[1] * w)  # noqa: E731
    grad = float(jax.grad(f)(1.0))
    def central(eps):
        return (float(f(1.0 + eps)) - float(f(1.0 - eps))) / (2 * eps)

    fd = (4 * central(5e-3) - central(1e-2)) / 3  # Richardson: cancels the eps^2 truncation error
    assert abs(grad - fd) < 2e-3 * max(1.0, abs(fd)), (grad, fd)
    first = dataclasses.replace(spec, bilevel="first_order")
    f1 = lambda scale: jnp.sum(engine.chunk(first, None, q, k * scale, v, g, init=init)[1] * w)  # noqa: E731
    assert abs(float(jax.grad(f1)(1.0)) - grad) > 1e-6  # first order drops a real term


def test_clipped_step_bounds_every_write():
    """With max_grad_norm = tau, each gd write moves W by at most rho_t * tau (the test inputs'
    gradients are larger than tau, so the clip is active), and tau = inf equals no clipping."""
    spec = MemorySpec(structure="mlp", depth=2, expansion=2, learner="gd", retention="none", chunk_size=1)
    init, q, k, v, g = inputs(spec, 6)
    first = engine.token_gradient(spec, init, k[0], v[0], {})
    assert float(jnp.sqrt(sum(jnp.sum(u * u) for u in first))) > 1.0
    clipped = dataclasses.replace(spec, max_grad_norm=0.5)
    state = initial_state(spec, init)
    for t in range(6):
        new, _ = engine.step(clipped, state, q[t], k[t], v[t], engine.gates_at(g, t))
        moved = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(new.weights, state.weights, strict=True)))
        assert float(moved) <= float(g["lr"][t]) * 0.5 + 1e-6
        state = new
    loose = dataclasses.replace(spec, max_grad_norm=1e9)
    close(engine.chunk(loose, None, q, k, v, g, init=init)[1], engine.chunk(spec, None, q, k, v, g, init=init)[1])
    assert float(jnp.abs(engine.chunk(clipped, None, q, k, v, g, init=init)[1]
                         - engine.chunk(spec, None, q, k, v, g, init=init)[1]).max()) > 1e-3


def test_spec_validation():
    with pytest.raises(ValueError, match="structure"):
        MemorySpec(structure="tree")
    with pytest.raises(ValueError, match="slots of a matrix memory"):
        MemorySpec(structure="mlp", retention="slot_norm")
    with pytest.raises(ValueError, match="chunk_size"):
        MemorySpec(chunk_size=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        MemorySpec(max_grad_norm=-1.0)


def test_grid_of_registered_parts_equals_its_oracle():
    """Every MLP memory x registered objective x registered learner x semantics that runs a
    parallel form (the dual form or a kernel) equals the token loop with gradients at the anchor
    (at W_{t-1} when exact), so a combination that silently runs the wrong form (like exact MLP +
    dot once did, or Muon on the momentum kernel) cannot hide."""
    from zoo.memory import parts

    for structure, objective, learner, semantics in itertools.product(
            ("mlp",), parts.OBJECTIVES, parts.LEARNERS, ("exact", "anchored")):  # matrix: the NumPy test
        spec = MemorySpec(structure=structure, depth=2, expansion=2, objective=objective, learner=learner,
                          semantics=semantics, chunk_size=4)
        if not engine.chunk_parallel(spec):  # chunk runs the oracle itself: nothing to compare
            continue
        init, q, k, v, g = inputs(spec, 9)
        st_c, y_c = jax.jit(lambda *a, spec=spec: engine.chunk(spec, None, *a[1:], init=a[0]))(init, q, k, v, g)
        st_r, y_r = jax.jit(lambda *a, spec=spec: engine.reference_chunked(spec, initial_state(spec, a[0]), *a[1:]))(
            init, q, k, v, g)
        try:
            close((y_c, st_c.weights, st_c.buffers), (y_r, st_r.weights, st_r.buffers))
        except AssertionError as e:
            raise AssertionError(f"{spec}: chunk != its oracle") from e


@pytest.mark.parametrize("window", [1, 3])
def test_muon_with_zero_newton_schulz_steps_is_momentum(window):
    """A learner landed by registration alone: Muon with NS_0 (O = S) and outer step 1 is the
    momentum learner, through Muon's chunk form (the momentum at every position) and its token loop
    vs the momentum learner's dual form; with an Omega window too (ATLAS without Newton-Schulz is
    OmegaNet with momentum)."""
    from zoo.memory import parts
    from zoo.memory.muon import muon_learner

    if "muon_ns0" not in parts.LEARNERS:
        parts.register_learner(muon_learner("muon_ns0", steps=0, outer_lr=1.0))
    momentum = MemorySpec(structure="mlp", depth=2, expansion=2, chunk_size=4, window=window)
    muon0 = dataclasses.replace(momentum, learner="muon_ns0")
    init, q, k, v, g = inputs(momentum, 11)
    want = engine.chunk(momentum, None, q, k, v, g, init=init)
    close(engine.chunk(muon0, None, q, k, v, g, init=init), want)  # per-position momenta vs the dual form
    close(engine.reference_chunked(muon0, initial_state(muon0, init), q, k, v, g), want)  # the token loop


def test_newton_schulz_pushes_singular_values_towards_one():
    from zoo.memory.muon import newton_schulz

    for shape in [(6, 12), (12, 6)]:
        s = 0.01 * jax.random.normal(jax.random.key(0), shape)
        sv = np.linalg.svd(np.asarray(newton_schulz(s, 5)), compute_uv=False)
        assert 0.6 < sv.min() and sv.max() < 1.25, sv
        np.testing.assert_array_equal(newton_schulz(s, 0), s)


def test_huber_objective_is_l2_inside_the_threshold_and_a_delta_step_outside():
    """Miras Eq. 16 (Yaad) per token: the l2 gradient 2r while ||r|| <= delta_t, else 2 delta_t
    tanh(10 r) (the smoothed l1 step); delta gets an outer gradient only outside."""
    from zoo.memory.huber import huber_loss

    v = jnp.zeros((2, 3))
    out = jnp.array([[0.5, -0.2, 0.4], [3.0, -2.0, 0.05]])  # ||r|| 0.67 and 3.6
    delta = jnp.array([1.0, 0.5])
    np.testing.assert_allclose(jax.grad(huber_loss)(out, v, {"huber_delta": delta}),
                               [[1.0, -0.4, 0.8], [1.0, -1.0, np.tanh(0.5)]], rtol=1e-5)
    d_delta = jax.grad(lambda d: huber_loss(out, v, {"huber_delta": d}))(delta)
    assert d_delta[0] == 0 and d_delta[1] > 0


def test_lp_objective_gradient_is_the_smoothed_p_power():
    """Miras Eq. 11 at p = 3: the gradient p sign(r) |r|^(p-1), smoothed only within sqrt(eps) of 0."""
    from zoo.memory.lp import lp_loss

    v = jnp.zeros((1, 4))
    out = jnp.array([[2.0, -0.5, 0.1, 0.0]])
    np.testing.assert_allclose(jax.grad(lp_loss)(out, v), 3 * jnp.sign(out) * jnp.abs(out) ** 2, atol=1e-5)
    np.testing.assert_allclose(lp_loss(out, v), jnp.sum(jnp.abs(out) ** 3), rtol=1e-4)
    p4 = MemorySpec(objective="lp", lp_p=4.0)
    np.testing.assert_allclose(jax.grad(lp_loss)(out, v, None, p4), 4 * out ** 3, atol=1e-5)


@pytest.mark.parametrize("semantics", ["exact", "anchored"])
def test_matrix_memory_equals_the_numpy_oracle(semantics):
    """The engine (dual form, delta-rule kernels or token loop, whichever it picks) against an
    oracle written from the equations in NumPy, for every objective x learner it knows."""
    from numpy_oracle import matrix_memory

    for objective, learner in itertools.product(("l2", "dot", "huber", "lp"), ("gd", "momentum", "muon")):
        spec = MemorySpec(structure="matrix", objective=objective, learner=learner, semantics=semantics, chunk_size=4)
        init, q, k, v, g = inputs(spec, 11)
        init = (3.0 * init[0],)  # residuals beyond Huber's threshold
        st, y = engine.chunk(spec, None, q, k, v, g, init=init)
        want_y, want_w, want_s = matrix_memory(objective, learner, semantics, 4, init[0], *map(np.asarray, (
            q, k, v, g["lr"], g["log_retention"], g["log_momentum"])), huber_delta=np.asarray(g["huber_delta"]),
            muon_lr=np.asarray(g["muon_lr"]))
        try:
            close((y, st.weights[0]), (want_y, want_w), tol=1e-4)
            if spec.learner != "gd":
                close(st.buffers["momentum"][0], want_s, tol=1e-4)
        except AssertionError as e:
            raise AssertionError(f"{spec}: engine != NumPy oracle") from e


@pytest.mark.parametrize("semantics", ["exact", "anchored"])
def test_moneta_lq_retention_equals_the_numpy_oracle(semantics):
    """Miras Eq. 24-25: the accumulator A_t = l_t A_{t-1} - rho_t grad l_p(W), read and
    differentiated as W = A / ||A||_4^2 (q = 4, p = 3), token by token against NumPy."""
    from numpy_oracle import matrix_memory

    spec = MemorySpec(structure="matrix", objective="lp", retention="lq", learner="gd", semantics=semantics,
                      chunk_size=4)
    assert engine.chunk_parallel(spec) == (semantics == "anchored")  # per-position states, each read via its view
    init, q, k, v, g = inputs(spec, 11)
    st, y = engine.chunk(spec, None, q, k, v, g, init=init)
    view = lambda a: a / max(np.sum(a ** 4) ** 0.5, 1e-6)  # noqa: E731
    want_y, want_a, _ = matrix_memory("lp", "gd", semantics, 4, init[0], *map(np.asarray, (
        q, k, v, g["lr"], g["log_retention"], g["log_momentum"])), view=view)
    close((y, st.weights[0]), (want_y, want_a), tol=1e-4)


def test_moneta_with_p2_q2_on_a_matrix_is_the_delta_rule():
    """The spec's degenerate reduction: l_p at p = 2 is l2 (up to eps, which has no gradient) and
    the l_q view at q = 2 is the identity, so Moneta's rule on a matrix is the delta rule the
    kernel computes."""
    moneta = MemorySpec(structure="matrix", objective="lp", lp_p=2.0, retention="lq", lq_q=2.0, learner="gd",
                        semantics="exact")
    delta = MemorySpec(structure="matrix", objective="l2", retention="scalar", learner="gd", semantics="exact")
    assert engine.delta_kernel(delta) is not None and engine.delta_kernel(moneta) is None
    init, q, k, v, g = inputs(delta, 13)
    (st_m, y_m), (st_d, y_d) = (engine.chunk(spec, None, q, k, v, g, init=init) for spec in (moneta, delta))
    close((y_m, st_m.weights), (y_d, st_d.weights), tol=1e-5)


def test_lq_view_of_a_learned_w0_is_w0():
    """Moneta starts its accumulator at A_0 = W_0 ||W_0||_q^((q-2)/(3-q)), whose view is W_0 (spec M6)."""
    w0 = (0.3 * jax.random.normal(jax.random.key(0), (6, 12)),)
    for q in (4.0, 2.5, 1.5):
        spec = MemorySpec(structure="matrix", retention="lq", lq_q=q)
        close(engine.view(spec, engine.state_of_weights(spec, w0)), w0, tol=1e-5)
    with pytest.raises(ValueError, match="lq_q must be > 1 and not 3"):
        MemorySpec(retention="lq", lq_q=3.0)


def test_channel_retention_decays_the_input_channels_of_every_layer():
    """Miras' channel-wise gates on the input axis of each weight matrix (spec §1.6): the key rows of
    the first layer, the hidden rows of the second, each with its own slice of the gate."""
    from zoo.memory.retention import retain

    spec = SPECS["mlp2_dot_channel_gd"]
    init = inputs(spec, 1)[0]
    assert [w.shape for w in init] == [(DK, 2 * DV), (2 * DV, DV)]
    log = -jnp.arange(DK + 2 * DV, dtype=jnp.float32) / 10
    kept = retain(spec, init, log)
    close(kept[0], init[0] * jnp.exp(log[:DK])[:, None])
    close(kept[1], init[1] * jnp.exp(log[DK:])[:, None])


def test_a_retention_landed_by_registration_runs_token_by_token():
    """A retention that is not multiplicative (a soft-threshold shrink after the decay, the shape
    of an elastic-net penalty) lands by registration alone: the spec accepts it, the engine leaves
    the dual form and the kernels for the token loop, and the result equals the NumPy oracle."""
    from numpy_oracle import matrix_memory

    from zoo.memory import parts

    shrink = 0.05

    def soft_threshold(w, log_ret):
        kept = w * np.exp(log_ret) if isinstance(w, np.ndarray) else w * jnp.exp(log_ret)
        xp = np if isinstance(w, np.ndarray) else jnp
        return xp.sign(kept) * xp.maximum(xp.abs(kept) - shrink, 0.0)

    if "test_shrink" not in parts.RETENTIONS:
        parts.register_retention(parts.Retention("test_shrink", gate="scalar", multiplicative=False,
                                                 apply=lambda ws, log_ret: tuple(soft_threshold(w, log_ret) for w in ws)))
    from zoo.config import from_dict  # model.memory's choices are the live registry

    cfg = from_dict(dict(model=dict(name="titans_lmm", memory=dict(structure="matrix", retention="test_shrink"))))
    assert cfg.model.memory.retention == "test_shrink"
    for semantics in ("exact", "anchored"):
        spec = MemorySpec(structure="matrix", retention="test_shrink", semantics=semantics, chunk_size=4)
        assert not engine.chunk_parallel(spec)
        init, q, k, v, g = inputs(spec, 11)
        st, y = engine.chunk(spec, None, q, k, v, g, init=init)
        want_y, want_w, want_s = matrix_memory("l2", "momentum", semantics, 4, init[0], *map(np.asarray, (
            q, k, v, g["lr"], g["log_retention"], g["log_momentum"])), retain=soft_threshold)
        close((y, st.weights[0], st.buffers["momentum"][0]), (want_y, want_w, want_s), tol=1e-4)
        _, y_decay_only = engine.chunk(dataclasses.replace(spec, retention="scalar"), None, q, k, v, g, init=init)
        assert float(jnp.abs(y - y_decay_only).max()) > 1e-2  # the shrink matters


def test_anchored_deep_memory_runs_its_kernels_op_once_for_all_heads():
    """Titans' deep memory on a fresh sequence of whole chunks (training) is ONE
    `kernels.anchored_memory` call on [batch, seq, heads, dim] with the spec's backend, documents
    and padding included, and equals the engine's anchored token loop per [batch, head]; the
    Pallas backend gives the same."""
    import kernels
    from kernels.common import Implementation

    table = kernels.IMPLEMENTATIONS["anchored_memory"]
    calls = []

    def probe(q, *args):
        calls.append(q.shape)
        return table["xla"].run(q, *args)

    table.register(Implementation("probe_for_test", probe))
    try:
        spec = dataclasses.replace(with_chunk(SPECS["mlp2_residual_momentum"], 4), kernel_backend="probe_for_test")
        assert engine.anchored_kernel(spec) and engine.anchored_kernel(SPECS["mlp2_clipped_momentum"])
        assert not engine.anchored_kernel(SPECS["mlp2_first_order_silu"]) and not engine.anchored_kernel(
            SPECS["mlp2_dot_channel_gd"])
        rows = [inputs(spec, 16, seed) for seed in range(4)]  # [batch 2, heads 2]
        init = jax.tree.map(lambda *w: jnp.stack(w), *[r[0] for r in rows[:2]])  # per-head W_0
        stack = lambda i: jax.tree.map(lambda *x: jnp.stack(x).reshape((2, 2) + x[0].shape), *[r[i] for r in rows])  # noqa: E731
        seg = jnp.array([[1] * 8 + [2] * 6 + [0] * 2, [1] * 5 + [0] * 3 + [2] * 8])
        st, y = jax.jit(lambda *a: engine.chunk_heads(spec, None, *a, init=init, segment_ids=seg))(
            stack(1), stack(2), stack(3), stack(4))
        assert calls == [(2, 16, 2, DK)]
        for b in range(2):
            for h in range(2):
                _, q, k, v, g = rows[2 * b + h]
                st_r, y_r = engine.reference_chunked(spec, initial_state(spec, rows[h][0]), q, k, v, g,
                                                     segment_ids=seg[b])
                close(y[b, h][seg[b] > 0], y_r[seg[b] > 0])
                if b == 1:  # row 0 ends in padding: the fresh state
                    close(jax.tree.map(lambda x, b=b, h=h: x[b, h], (st.weights, st.buffers)), (st_r.weights, st_r.buffers))
        close(jax.tree.map(lambda x: x[0], st.weights), init)
        # the Pallas kernels (interpreted here) in the same training form: the same state and reads
        pallas = dataclasses.replace(spec, kernel_backend="pallas")
        st_p, y_p = jax.jit(lambda *a: engine.chunk_heads(pallas, None, *a, init=init, segment_ids=seg))(
            stack(1), stack(2), stack(3), stack(4))
        close((y_p, st_p.weights, st_p.buffers), (y, st.weights, st.buffers))
    finally:
        del table["probe_for_test"]


def test_exact_kernel_tile_and_backend_are_execution_choices():
    """kernel_chunk tiles the exact memory's kernels op and kernel_backend picks its implementation
    (a fallback list too): neither changes the result, and neither is the anchored chunk size."""
    spec = with_chunk(SPECS["matrix_l2_exact_kernel"], 4)
    init, q, k, v, g = inputs(spec, 15)
    seg = jnp.array([1] * 6 + [2] * 9)
    run = lambda s: engine.chunk(s, None, q, k, v, g, init=init, segment_ids=seg)  # noqa: E731
    st, y = run(spec)
    for other in (dataclasses.replace(spec, kernel_chunk=3), dataclasses.replace(spec, kernel_backend="reference"),
                  dataclasses.replace(spec, kernel_backend="reference, xla"),
                  dataclasses.replace(spec, kernel_backend="pallas")):
        st2, y2 = run(other)
        close(y2, y)
        close(st2.weights, st.weights)
    with pytest.raises(ValueError, match="kernel_backend='triton'.*allowed are 'auto', 'pallas', 'reference', 'xla'"):
        dataclasses.replace(spec, kernel_backend="triton")


@pytest.mark.parametrize("semantics", ["exact", "anchored"])
def test_omega_window_equals_the_numpy_oracle(semantics):
    """ATLAS Eq. 9-11 (OmegaNet, SWLA) on a matrix memory: u_t = sum over the last c tokens of the
    same document of gamma_i u_i (or gamma_t[t - i], per lag), each u_i at W_{t-1} (exact) or the
    chunk anchor (anchored: the halo recomputed there) and clipped to tau, against NumPy; c = 6
    and 5 reach past the previous chunk."""
    from numpy_oracle import matrix_memory

    seg = jnp.array([1] * 8 + [2] * 7)
    for objective, learner, c, tau, mode in [("l2", "gd", 3, 0.0, "token"), ("l2", "momentum", 6, 0.0, "token"),
                                             ("dot", "gd", 2, 0.0, "token"), ("l2", "momentum", 3, 0.5, "token"),
                                             ("l2", "gd", 3, 0.5, "lag"), ("dot", "gd", 5, 0.0, "lag")]:
        spec = MemorySpec(structure="matrix", objective=objective, learner=learner, semantics=semantics,
                          chunk_size=4, window=c, max_grad_norm=tau, window_gates=mode)
        assert engine.chunk_parallel(spec) == (semantics == "anchored" or objective == "dot")
        init, q, k, v, g = inputs(spec, 15)
        st, y = engine.chunk(spec, None, q, k, v, g, init=init, segment_ids=seg)
        want_y, want_w, _ = matrix_memory(objective, learner, semantics, 4, init[0], *map(np.asarray, (
            q, k, v, g["lr"], g["log_retention"], g["log_momentum"])), window=c, gamma=np.asarray(g["window_weight"]),
            max_grad_norm=tau, segment_ids=np.asarray(seg),
            lag_gamma=np.asarray(g["window_lag_weights"]) if mode == "lag" else None)
        try:
            close((y, st.weights[0]), (want_y, want_w), tol=1e-4)
        except AssertionError as e:
            raise AssertionError(f"{spec}: engine != NumPy oracle") from e
        _, y_c1 = engine.chunk(dataclasses.replace(spec, window=1), None, q, k, v, g, init=init, segment_ids=seg)
        assert float(jnp.abs(y - y_c1).max()) > 1e-3  # the window matters


def test_dla_with_a_matrix_is_gated_linear_attention():
    """The spec's reduction (ATLAS §3.5): the dot-product bias with gradient descent and decay on a
    matrix, c = 1, is gated linear attention W_t = l_t W_{t-1} + rho_t k_t^T v_t (any chunk size:
    its gradient does not depend on W)."""
    spec = MemorySpec(structure="matrix", objective="dot", learner="gd", retention="scalar", chunk_size=4)
    init, q, k, v, g = inputs(spec, 11)
    w, want = np.asarray(init[0], np.float64), []
    for t in range(11):
        w = np.exp(float(g["log_retention"][t])) * w + float(g["lr"][t]) * np.outer(k[t], v[t])
        want.append(np.asarray(q[t]) @ w)
    st, y = engine.chunk(spec, None, q, k, v, g, init=init)
    close((y, st.weights[0]), (np.stack(want), w), tol=1e-5)


def test_poly2_features_are_a_learned_truncated_exponential_kernel():
    """ATLAS Eq. 22-23 at p = 2: phi(q).phi(k) = sum_i a_i (q.k)^i on the normalised q, k, with
    a = softplus(raw) per head, 1 + d + d(d+1)/2 features, and a_i = 1/i! at initialisation."""
    from zoo.memory import parts
    from zoo.memory.feature_maps import polynomial_features

    fm = parts.feature_map("poly2")
    raw = jax.random.normal(jax.random.key(0), (2, 3))  # [heads, degree + 1]
    q, k = jax.random.normal(jax.random.key(1), (2, 5, 2, 4))  # [batch 5, heads 2, d 4]
    phi_q, phi_k = fm(q, raw), fm(k, raw)
    assert phi_q.shape == (5, 2, fm.out_dim(4)) == (5, 2, 15)
    cos = jnp.sum(q * k, -1) / (jnp.linalg.norm(q, axis=-1) * jnp.linalg.norm(k, axis=-1))
    a = jax.nn.softplus(raw)
    np.testing.assert_allclose(jnp.sum(phi_q * phi_k, -1), a[:, 0] + a[:, 1] * cos + a[:, 2] * cos ** 2, rtol=1e-5, atol=1e-5)
    init = jnp.log(jnp.expm1(jnp.asarray(fm.coefficients)))
    np.testing.assert_allclose(jax.nn.softplus(init), [1.0, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(polynomial_features(q, jnp.tile(init, (2, 1)))[..., 0], 1.0, rtol=1e-6)


@pytest.mark.parametrize("semantics", ["exact", "anchored"])
def test_memora_kl_retention_equals_the_numpy_oracle(semantics):
    """Miras Eq. 27 (Memora) in log-weights (spec M7): L_t = l_t L_{t-1} - rho_t grad l2(W_{t-1}),
    read and differentiated as W = sqrt(d_in) softmax(L) over each unit's fan-in; against NumPy
    token by token, and in the chunk form (each read through its own position's softmax)."""
    from numpy_oracle import matrix_memory

    spec = MemorySpec(structure="matrix", objective="l2", retention="kl", learner="gd", semantics=semantics,
                      chunk_size=4)
    assert engine.chunk_parallel(spec) == (semantics == "anchored")
    init, q, k, v, g = inputs(spec, 11)

    def view(logits):
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        return np.sqrt(logits.shape[0]) * e / e.sum(axis=0, keepdims=True)

    st, y = engine.chunk(spec, None, q, k, v, g, init=init)
    want_y, want_l, _ = matrix_memory("l2", "gd", semantics, 4, init[0], *map(np.asarray, (
        q, k, v, g["lr"], g["log_retention"], g["log_momentum"])), view=view)
    close((y, st.weights[0]), (want_y, want_l), tol=1e-4)
    w = engine.view(spec, st.weights)[0]  # positive, each unit's fan-in sums to sqrt(d_in)
    assert float(w.min()) > 0
    np.testing.assert_allclose(w.sum(axis=0), np.sqrt(DK), rtol=1e-5)


def test_deeptransformer_with_a_matrix_is_unnormalised_kernel_attention():
    """ATLAS Eq. 25-26: the dot-product bias with Hebbian GD (rho = 1, no decay) on a matrix memory
    over phi* is unnormalised softmax attention, y_t = sum_{i<=t} exp(q_t.k_i) v_i; with phi*
    truncated at degree 2 ("exp2") and the mixer's L2 normalisation of the features, the kernel is
    (1 + c + c^2 / 2) / 2.5 with c the cosine of q_t and k_i."""
    from zoo.memory import parts

    t, d = 9, 4
    fm = parts.feature_map("exp2")
    q, k = jax.random.normal(jax.random.key(0), (2, t, d))
    v = jax.random.normal(jax.random.key(1), (t, d))
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731  the mixer's normalisation
    phi_q, phi_k = unit(fm(q[:, None])[:, 0]), unit(fm(k[:, None])[:, 0])
    spec = MemorySpec(structure="matrix", objective="dot", learner="gd", retention="none", chunk_size=4)
    _, y = engine.chunk(spec, None, phi_q, phi_k, v, {"lr": jnp.ones((t,))}, init=(jnp.zeros((fm.out_dim(d), d)),))
    cos = unit(q) @ unit(k).T
    kernel = jnp.tril((1 + cos + cos ** 2 / 2) / 2.5)
    close(y, kernel @ v, tol=1e-5)


@pytest.mark.parametrize("semantics", ["exact", "anchored"])
def test_elastic_net_retention_equals_the_numpy_oracle(semantics):
    """Miras Eq. 23 (FTRL elastic net): A_t = l_t A_{t-1} - rho_t grad l2(W_{t-1}), W = S_gamma(A)
    the soft threshold, against NumPy token by token and in the chunk form; a learned W_0 is the
    view of the accumulator it starts from; some entries read as exactly zero."""
    from numpy_oracle import matrix_memory

    gamma = 0.05
    spec = MemorySpec(structure="matrix", objective="l2", retention="elastic_net", elastic_threshold=gamma,
                      learner="momentum", semantics=semantics, chunk_size=4)
    init, q, k, v, g = inputs(spec, 11)
    close(engine.view(spec, engine.state_of_weights(spec, init)), init, tol=1e-6)
    st, y = engine.chunk(spec, None, q, k, v, g, init=init)
    view = lambda a: np.sign(a) * np.maximum(np.abs(a) - gamma, 0.0)  # noqa: E731
    want_y, want_a, _ = matrix_memory("l2", "momentum", semantics, 4, init[0], *map(np.asarray, (  # init: A_0
        q, k, v, g["lr"], g["log_retention"], g["log_momentum"])), view=view)
    close((y, st.weights[0]), (want_y, want_a), tol=1e-4)
    assert (np.asarray(engine.view(spec, st.weights)[0]) == 0).any()
    with pytest.raises(ValueError, match="elastic_threshold must be >= 0"):
        MemorySpec(retention="elastic_net", elastic_threshold=-1.0)


def test_omega_window_weighing_only_lag_zero_is_the_plain_rule():
    """The spec's reduction "Omega with c = 1 is Titans", through the window's own code: per-lag
    weights (1, 0, 0) switch the two earlier tokens of every window off (halo, chunk form, carried
    window and all), which must equal the memory without a window."""
    plain = MemorySpec(structure="mlp", depth=2, expansion=2, residual=True, chunk_size=4)
    lagged = dataclasses.replace(plain, window=3, window_gates="lag")
    init, q, k, v, g = inputs(lagged, 13)
    g = dict(g, window_lag_weights=jnp.tile(jnp.array([1.0, 0.0, 0.0]), (13, 1)))
    want = engine.chunk(plain, None, q, k, v, g, init=init)
    got = engine.chunk(lagged, None, q, k, v, g, init=init)
    close((got[1], got[0].weights, got[0].buffers), (want[1], want[0].weights, want[0].buffers))
    g_on = dict(g, window_lag_weights=jnp.ones((13, 3)))
    assert float(jnp.abs(engine.chunk(lagged, None, q, k, v, g_on, init=init)[1] - want[1]).max()) > 1e-3

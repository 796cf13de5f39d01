"""The public surface of `kernels`: names, defaults, backend choice and argument validation."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import jit

import kernels

B, T, H, DK, DV = 1, 3, 2, 4, 3


def _args(op):
    """Valid positional arguments of `op` plus its state keyword names, tiny shapes."""
    rng = np.random.default_rng(0)
    qkv = [rng.standard_normal((B, T, H, d)).astype(np.float32) for d in (DK, DK, DV)]
    gate = lambda: rng.uniform(-0.5, 0.0, (B, T, H)).astype(np.float32)
    state = lambda: rng.standard_normal((B, H, DK, DV)).astype(np.float32)
    args = {"q": qkv[0], "k": qkv[1], "v": qkv[2]}
    if op is kernels.gated_delta_rule:
        return {**args, "beta": -gate(), "g": gate(), "initial_state": state()}
    return {**args, "lr": -gate(), "log_retention": gate(), "log_momentum": gate(), "initial_state": state(),
            "initial_momentum": state()}


OPS = [kernels.gated_delta_rule, kernels.momentum_delta_rule]


def test_exports_and_implementation_tables():
    assert set(kernels.__all__) >= {"IMPLEMENTATIONS", "gated_delta_rule", "momentum_delta_rule"}
    for op in kernels.MEMORY_OPS:
        table = kernels.IMPLEMENTATIONS[op]
        assert set(table) == {"reference", "xla", "pallas"} and table.auto == ("pallas", "xla")
        # CPU: auto is the XLA form; Pallas runs (interpreted) only when named
        assert table.select("auto").name == "xla" and table.select("reference").name == "reference"
        assert table.select("pallas").name == "pallas"


@pytest.mark.parametrize("op", OPS)
def test_defaults_auto_and_shapes(op):
    args = _args(op)

    @jit
    def calls(args):
        explicit = op(**args, scale=DK**-0.5, output_final_state=True, backend="xla")
        default = op(**args, output_final_state=True)  # scale dk**-0.5, backend "auto" (= "xla")
        no_state = op(**args)
        return explicit, default, no_state

    explicit, default, no_state = calls(args)
    assert no_state[1] is None
    assert explicit[0].shape == (B, T, H, DV) and explicit[0].dtype == jnp.float32
    jax.tree.map(np.testing.assert_array_equal, explicit, default)
    np.testing.assert_array_equal(no_state[0], default[0])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["triton", "XLA", "", None, [], ["xla", 3]])
def test_unknown_backend_lists_allowed_names(op, backend):
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'reference', 'xla', 'pallas'"):
        op(**_args(op), backend=backend)


@pytest.fixture
def table_with_a_tpu_backend():
    """gated_delta_rule's table with a backend that runs only on TPU (removed afterwards)."""
    table = kernels.IMPLEMENTATIONS["gated_delta_rule"]
    saved = (dict(table), table.auto)
    calls = []

    def tpu_only(q, k, v, *rest):
        calls.append(q.shape)
        return table["reference"].run(q, k, v, *rest)

    table.register(kernels.Implementation("fake_tpu", tpu_only, platforms=("tpu",)), prefer=True)
    yield table, calls
    table.clear()
    table.update(saved[0])
    table.auto = saved[1]


def test_fallback_lists_and_auto_skip_backends_the_platform_lacks(table_with_a_tpu_backend):
    table, calls = table_with_a_tpu_backend
    assert table.auto == ("fake_tpu", "pallas", "xla")
    assert table.select("auto", "cpu").name == "xla" and table.select("auto", "tpu").name == "fake_tpu"
    assert table.select(["fake_tpu", "reference"], "cpu").name == "reference"
    args = _args(kernels.gated_delta_rule)
    via_list = kernels.gated_delta_rule(**args, backend=("fake_tpu", "reference"))
    np.testing.assert_array_equal(via_list[0], kernels.gated_delta_rule(**args, backend="reference")[0])
    assert calls == []  # this machine is no TPU: the fake never ran
    with pytest.raises(ValueError, match=r"none of \['fake_tpu'\] runs on platform 'cpu'.*add 'xla'"):
        kernels.gated_delta_rule(**args, backend="fake_tpu")
    with pytest.raises(ValueError, match="already registered"):
        table.register(kernels.Implementation("xla", table["xla"].run))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, "64", None])
def test_bad_chunk_size(op, chunk_size):
    with pytest.raises(ValueError, match=r"^chunk_size must be an int >= 1"):
        op(**_args(op), chunk_size=chunk_size)


_SHAPE_ERRORS = [
    # (op, argument, replacement shape)
    (kernels.gated_delta_rule, "q", (B, T, H)),
    (kernels.gated_delta_rule, "k", (B, T, H, DK + 1)),
    (kernels.gated_delta_rule, "v", (B, T + 1, H, DV)),
    (kernels.gated_delta_rule, "beta", (B, T, H + 1)),
    (kernels.gated_delta_rule, "g", (B, T)),
    (kernels.gated_delta_rule, "initial_state", (B, H, DV, DK)),
    (kernels.momentum_delta_rule, "k", (B, T + 1, H, DK)),
    (kernels.momentum_delta_rule, "v", (B, T, H + 1, DV)),
    (kernels.momentum_delta_rule, "lr", (B, T + 1, H)),
    (kernels.momentum_delta_rule, "log_retention", (B, H, T)),
    (kernels.momentum_delta_rule, "log_momentum", (B, T, H, 1)),
    (kernels.momentum_delta_rule, "initial_state", (B, H, DK, DV + 1)),
    (kernels.momentum_delta_rule, "initial_momentum", (B, H, DK)),
]


@pytest.mark.parametrize("op,name,shape", _SHAPE_ERRORS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_bad_shapes_name_the_argument(op, name, shape):
    args = _args(op)
    args[name] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{name} must .*got") as info:
        op(**args)
    assert str(shape) in str(info.value)


@pytest.mark.parametrize("op", OPS)
def test_integer_inputs_are_rejected(op):
    args = _args(op)
    args["v"] = args["v"].astype(np.int32)
    with pytest.raises(ValueError, match=r"^v must be a floating-point array; got dtype int32"):
        op(**args)


def test_zero_length_sequence_is_rejected():
    args = _args(kernels.gated_delta_rule)
    args.update(q=args["q"][:, :0], k=args["k"][:, :0], v=args["v"][:, :0], beta=args["beta"][:, :0],
                g=args["g"][:, :0])
    with pytest.raises(ValueError, match=r"seq >= 1"):
        kernels.gated_delta_rule(**args)


def test_initial_momentum_without_momentum_is_rejected():
    args = _args(kernels.momentum_delta_rule)
    args["log_momentum"] = None
    with pytest.raises(ValueError, match=r"^initial_momentum was given but log_momentum is None"):
        kernels.momentum_delta_rule(**args)
    del args["initial_momentum"]
    _, (w, s) = jit(lambda a: kernels.momentum_delta_rule(**a, output_final_state=True))(args)
    assert s is None and w.shape == (B, H, DK, DV) and w.dtype == jnp.float32


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ids, message", [
    (np.zeros((B, T + 1), np.int32), r"^segment_ids must have shape \[batch, seq\] = \(1, 3\); got \(1, 4\)"),
    (np.zeros((B, T), np.float32), r"^segment_ids must be an integer array \[batch, seq\]; got dtype float32"),
])
def test_bad_segment_ids(op, ids, message):
    with pytest.raises(ValueError, match=message):
        op(**_args(op), segment_ids=ids)


def test_both_unit_lower_solvers_equal_numpy_values_and_gradients():
    """The chunked kernels' (I + A) X = rhs: forward substitution (what CPU runs, see
    kernels.common.solve_unit_lower) and XLA's triangular solve (accelerators) against NumPy."""
    from kernels.common import solve_by_substitution, solve_by_xla

    ks = jax.random.split(jax.random.key(0), 3)
    a = jnp.tril(0.3 * jax.random.normal(ks[0], (2, 3, 8, 8)), -1)
    rhs = jax.random.normal(ks[1], (2, 3, 8, 5))
    want = np.linalg.solve(np.eye(8) + np.asarray(a, np.float64), np.asarray(rhs, np.float64))
    cot = jax.random.normal(ks[2], rhs.shape)
    grads = {}
    for name, solve in (("substitution", solve_by_substitution), ("xla", solve_by_xla)):
        np.testing.assert_allclose(solve(a, rhs), want, atol=1e-5, rtol=1e-5)
        grads[name] = jax.grad(lambda a, r, s=solve: jnp.sum(s(jnp.tril(a, -1), r) * cot), argnums=(0, 1))(a, rhs)
    for g_sub, g_xla in zip(grads["substitution"], grads["xla"], strict=True):
        np.testing.assert_allclose(g_sub, g_xla, atol=1e-5, rtol=1e-5)


def _anchored_args(seq=8):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, seq, H, d)).astype(np.float32) for d in (DK, DK, DV))
    gates = [rng.uniform(-0.5, 0.0, (B, seq, H)).astype(np.float32) for _ in range(3)]
    weights = (rng.standard_normal((B, H, DK, 5)).astype(np.float32), np.zeros((B, H, 5, DV), np.float32))
    return (q, k, v, -gates[0], gates[1], gates[2]), weights


def test_anchored_memory_table_defaults_and_errors():
    args, weights = _anchored_args()
    o, (w, s) = kernels.anchored_memory(*args, initial_weights=weights, chunk_size=4, output_final_state=True)
    assert o.shape == (B, 8, H, DV) and [x.shape for x in w] == [x.shape for x in weights] == [x.shape for x in s]
    assert kernels.anchored_memory(*args, initial_weights=weights)[1] is None
    with pytest.raises(ValueError, match=r"initial_weights must chain .* from dk=4 to dv=3"):
        kernels.anchored_memory(*args, initial_weights=(weights[0],))
    with pytest.raises(ValueError, match="activation='tanh'; allowed: gelu, silu"):
        kernels.anchored_memory(*args, initial_weights=weights, activation="tanh")
    with pytest.raises(ValueError, match="residual memory needs dk == dv"):
        kernels.anchored_memory(*args, initial_weights=weights, residual=True)
    with pytest.raises(ValueError, match="initial_momentum was given but log_momentum is None"):
        kernels.anchored_memory(*args[:5], None, initial_weights=weights, initial_momentum=weights)
    off_grid = np.array([[1, 1, 1, 2, 2, 2, 2, 2]], np.int32)
    with pytest.raises(ValueError, match=r"start on the chunk grid .* \(row, token\) \[\(0, 3\)\]"):
        kernels.anchored_memory(*args, initial_weights=weights, chunk_size=4, segment_ids=off_grid)
    # the reference takes documents anywhere (each restarts its own chunk grid)
    kernels.anchored_memory(*args, initial_weights=weights, chunk_size=4, segment_ids=off_grid, backend="reference")


def test_polysketch_attention_defaults_and_errors():
    rng = np.random.default_rng(0)
    phi, v, local = (rng.standard_normal((B, 8, H, d)).astype(np.float32) for d in (3, DV, 5))
    o, (s, z) = kernels.polysketch_attention(phi, phi, v, block_size=4, output_final_state=True)
    assert o.shape == (B, 8, H, DV) and s.shape == (B, H, 9, DV) and z.shape == (B, H, 9)
    assert kernels.IMPLEMENTATIONS["polysketch_attention"].select("auto").name == "xla"  # CPU
    assert kernels.polysketch_attention(phi, phi, v)[1] is None
    errors = [
        (dict(local_q=local), "pass local_q and local_k together"),
        (dict(local_q=local, local_k=local[:, :4]), r"local_q and local_k must both have shape .* got \(1, 8, 2, 5\) "
                                                    r"and \(1, 4, 2, 5\)"),
        (dict(degree=3), "degree must be an even int >= 2"),
        (dict(block_size=0), "chunk_size must be an int >= 1"),
        (dict(initial_state=np.zeros((B, H, 9, DV))), r"initial_state must be a pair \(S"),
        (dict(initial_state=(np.zeros((B, H, 9, DV)), np.zeros((B, H, 3)))),
         r"initial_state\[1\] \(z\) must have shape \[batch, heads, r\^2\] = \(1, 2, 9\)"),
        (dict(segment_ids=np.zeros((B, 7), np.int32)), r"segment_ids must have shape \[batch, seq\]"),
        (dict(backend="cuda"), "polysketch_attention: backend must be one of 'auto', 'reference', 'xla', 'pallas'"),
    ]
    for kwargs, message in errors:
        with pytest.raises(ValueError, match=message):
            kernels.polysketch_attention(phi, phi, v, **kwargs)
    with pytest.raises(ValueError, match=r"phi_q and phi_k must both have shape \[batch, seq, heads, r\]"):
        kernels.polysketch_attention(phi, phi[..., :2], v)
    with pytest.raises(ValueError, match="phi_q must be a floating-point array"):
        kernels.polysketch_attention(phi.astype(np.int32), phi, v)


@pytest.mark.parametrize("outcome", ["compiles", "fails"])
def test_auto_prefers_pallas_on_accelerators_after_its_probe(outcome, monkeypatch):
    """On a GPU or TPU, "auto" runs the Pallas kernels once their probe (a tiny forward + backward
    compile, once per op and platform) succeeds; a failing probe warns once, naming the error, and
    "auto" falls back to xla. On CPU, "auto" never probes."""
    table = kernels.IMPLEMENTATIONS["gated_delta_rule"]
    probes = []

    def probe(dk, dv, chunk_size):
        probes.append((outcome, dk, dv, chunk_size))
        if outcome == "fails":
            raise NotImplementedError("Unimplemented primitive in Pallas lowering: cumsum")

    monkeypatch.setitem(table, "pallas", dataclasses.replace(table["pallas"], probe=probe))
    assert table.select("auto", "cpu", (8, 6, 64)).name == "xla" and probes == []
    picked = "pallas" if outcome == "compiles" else "xla"
    if outcome == "compiles":
        assert table.select("auto", "gpu", (8, 6, 64)).name == "pallas"
        assert table.select("auto", "tpu", (8, 6, 64)).name == "pallas"
    else:
        with pytest.warns(RuntimeWarning, match=r"'pallas' backend does not compile on gpu for \(8, 6, 64\) "
                                                r".*cumsum.*falls back"):
            assert table.select("auto", "gpu", (8, 6, 64)).name == "xla"
    assert table.select("auto", "gpu", (8, 6, 64)).name == picked  # cached: no second probe
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert table.select("auto", "gpu", (16, 16, 32)).name == picked  # other shapes: probed again
    assert len(caught) == (outcome == "fails")
    platforms = 2 if outcome == "compiles" else 1
    assert probes == [(outcome, 8, 6, 64)] * platforms + [(outcome, 16, 16, 32)]
    assert table.select("pallas", "gpu").name == "pallas"  # named explicitly: no probe


@pytest.mark.parametrize("op,signature", [("gated_delta_rule", (8, 6, 4)), ("momentum_delta_rule", (8, 6, 4, True)),
                                          ("anchored_memory", (((8, 5), (5, 8)), 4, "gelu", True, False)),
                                          ("polysketch_attention", (3, 6, 5, 4, 4))])
def test_probe_compiles_on_cpu(op, signature):
    """Each op's probe is a real compile of its kernels (here interpreted), also inside a jit trace
    (where "auto" runs it): it raises nothing."""
    import importlib

    probe = importlib.import_module(f"kernels.{op}.pallas").probe
    probe(*signature)
    jax.jit(lambda x: probe(*signature) or x)(1.0)

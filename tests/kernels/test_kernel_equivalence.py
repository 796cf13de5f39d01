"""The reference backend of every op equals the float64 NumPy loop; the other backends are checked
against the reference by the shared contract (backend_contract.py): the pure-JAX chunked backend,
"xla", and the Pallas backend (`kernels/pallas_chunks.py` and each op's `pallas.py`, interpreted on
CPU): outputs, final states and the gradients of all inputs across ragged T, T < chunk, T = 1,
with and without initial state, with document resets, continuing from a final state, and bf16
inputs. One file, so both backends share the reference's compiled programs (`forward_and_vjp`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from backend_contract import CASE_NAMES, GRAD_CASES, BackendContract, forward
from kernel_cases import CASES, assert_close

from kernels.gated_delta_rule.pallas import pallas_gated_delta_rule
from kernels.momentum_delta_rule.pallas import pallas_momentum_delta_rule
from kernels.pallas_chunks import value_split


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_reference_matches_numpy_loop(case_name):
    case = CASES[case_name]
    x = case.inputs(np.random.default_rng(0), 37)
    chunk = 4 if case.anchored else 64
    got = forward(case_name, "reference", chunk, x)
    want = case.numpy(x, chunk)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, what=f"output {i}")
    # The oracle is not trivially satisfied: the states really move and the outputs are not tiny.
    assert np.abs(want[1] - x[case.state_keys[0]]).max() > 0.1
    assert np.abs(want[0]).max() > 0.1


class TestXla(BackendContract):
    backend = "xla"


# The chunk arithmetic inside the kernels is the xla backend's own function (TestXla runs the whole
# grid); this subset covers what the Pallas driver adds: T = 1 and T < C (one zero-padded chunk),
# several chunks with a ragged tail (the padded last chunk's state read at its last real row, the
# reverse chunk loop, the saved chunk-start states), and document resets across chunks, per op.
PALLAS_GRID = {(1, 4), (5, 16), (37, 4)}
PALLAS_GRAD_CASES = [(name, seq, chunk) for name, seq, chunk in GRAD_CASES
                     if (seq, chunk) in PALLAS_GRID or name.startswith("anchored_memory") or name.endswith("/resets")]


class TestPallas(BackendContract):
    backend = "pallas"
    grad_cases = PALLAS_GRAD_CASES


@pytest.mark.parametrize("op", ["gated_delta_rule", "momentum_delta_rule"])
def test_value_columns_split_across_programs_equal_one_program(op):
    """The delta rules' state columns evolve independently: with the value dimension cut into
    blocks of 2 (3 programs per head, as GPUs run it), outputs, final states and the gradients of
    every input (q, k and the gates summed over the blocks) equal the unsplit kernel's."""
    rng = np.random.default_rng(4)
    b, t, h, dk, dv, chunk = 2, 11, 2, 4, 6, 4
    q, k = (jnp.asarray(rng.standard_normal((b, t, h, dk)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.standard_normal((b, t, h, dv)), jnp.float32)
    gates = [jnp.asarray(rng.uniform(0.05, 0.9, (b, t, h)), jnp.float32) for _ in range(2)]
    gates[1] = -gates[1]  # a log decay
    s0 = jnp.asarray(rng.standard_normal((b, h, dk, dv)), jnp.float32)
    starts = jnp.zeros((b, t, h), bool).at[0, 6].set(True)
    if op == "gated_delta_rule":
        run = lambda x, block: pallas_gated_delta_rule(*x, 0.5, chunk, starts, value_block=block)  # noqa: E731
        x = (q, k, v, gates[0], gates[1], s0)
    else:
        log_mom = -jnp.asarray(rng.uniform(0.05, 0.5, (b, t, h)), jnp.float32)
        run = lambda x, block: pallas_momentum_delta_rule(*x[:5], x[5], x[6], x[7], 0.5, chunk, starts,  # noqa: E731
                                                           value_block=block)
        x = (q, k, v, gates[0], gates[1], log_mom, s0, 0.5 * s0)
    cot = jnp.asarray(rng.standard_normal((b, t, h, dv)), jnp.float32)

    def loss(x, block):
        o, *states = run(x, block)
        return jnp.sum(o * cot) + sum(jnp.sum(s * s) for s in states), (o, states)

    (_, whole), grads = jax.jit(jax.value_and_grad(lambda x: loss(x, None), has_aux=True))(x)
    (_, cut), grads_cut = jax.jit(jax.value_and_grad(lambda x: loss(x, 2), has_aux=True))(x)
    for a, b_ in zip(jax.tree.leaves((cut, grads_cut)), jax.tree.leaves((whole, grads)), strict=True):
        # sums over blocks reorder fp32 additions: tolerance relative to each array's scale
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=2e-5 * float(jnp.abs(b_).max()))
    assert value_split(6, (True,), 2).blocks == 3 and value_split(6, (True,), 4).blocks == 1


def test_bad_value_block_flag_names_the_fix(monkeypatch):
    monkeypatch.setenv("MEMZOO_PALLAS_VALUE_BLOCK", "sixty-four")
    with pytest.raises(ValueError, match=r"MEMZOO_PALLAS_VALUE_BLOCK='sixty-four': must be a positive int"):
        value_split(128, (True,))
    monkeypatch.setenv("MEMZOO_PALLAS_VALUE_BLOCK", "32")
    assert value_split(128, (True,)).blocks == 4

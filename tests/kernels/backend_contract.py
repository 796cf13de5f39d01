"""The contract every backend of every `kernels` op meets, written once: a backend's tests are a
subclass that names it (`class TestXla(BackendContract): backend = "xla"`), so a new backend (a
Pallas kernel) adds one small file, not a test suite.

The reference backend (itself checked against the float64 NumPy loop in test_kernel_equivalence.py)
is the oracle: outputs, final states and the gradients of all inputs, for T below, at and off the
chunk grid, with document resets; continuing from a final state; bf16 inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import CASES, assert_close, jit, random_like

CASE_NAMES = list(CASES)


@functools.cache
def forward_and_vjp(case_name, backend, chunk_size):
    """jit of x, cotangents -> (outputs, vjp(cotangents)); cached so tests share compiled shapes."""
    case = CASES[case_name]

    def f(x, cotangents):
        outputs, pullback = jax.vjp(lambda x: case.run(x, backend, chunk_size), x)
        return outputs, pullback(cotangents)[0]

    return jit(f)


def forward(case_name, backend, chunk_size, x):
    zeros = tuple(np.zeros(shape, np.float32) for shape in CASES[case_name].output_shapes(x["q"].shape[1]))
    return forward_and_vjp(case_name, backend, chunk_size)(x, zeros)[0]


# T = 1 and 5 sit below the chunk size (tail only; T = 1 is the same program for every chunk size),
# 16 on the grid, 37 off it (scan + tail).
GRID = [(1, 4), (5, 4), (5, 16), (16, 4), (16, 16), (37, 4), (37, 16)]
# The no-momentum flag changes only the coefficients; a corner of the grid keeps the suite fast.
NO_MOMENTUM_GRID = [(1, 4), (5, 16), (37, 4)]
# Resets: starts inside chunks, on the grid, back to back and on the last token (kernel_cases.STARTS).
RESETS_GRID = [(37, 4), (37, 16)]
# The anchored op compiles a deep memory's second-order gradients (several seconds a shape): a tail
# below one chunk, two chunks and a tail, and one shape per other variant.
# PolySketch's block step is a few masked matmuls: T = 1, a tail below one block, several blocks with
# a tail, resets on and off the grid; the sketched-only variant differs in one weight matrix.
OP_GRIDS = {"anchored_memory": [(5, 4), (37, 16)], "anchored_memory/resets": [(37, 4)],
            "anchored_memory/no_momentum": [(37, 4)], "anchored_memory/no_momentum/resets": [(37, 16)],
            "polysketch_attention": [(1, 4), (5, 16), (37, 4)], "polysketch_attention/resets": [(37, 4), (37, 16)],
            "polysketch_attention/sketched": [(37, 16)], "polysketch_attention/sketched/resets": [(37, 4)]}
GRAD_CASES = [(name, seq, chunk) for name in CASE_NAMES
              for seq, chunk in (OP_GRIDS[name] if name in OP_GRIDS else
                                 RESETS_GRID if name.endswith("/resets") else
                                 NO_MOMENTUM_GRID if name.endswith("no_momentum") else GRID)]


class BackendContract:
    """Subclass with `backend = "<name>"` (a name in the ops' IMPLEMENTATIONS tables); `grad_cases`
    (default GRAD_CASES) may be a subset where a backend shares its chunk arithmetic with one that
    runs the whole grid."""

    backend: str = ""
    grad_cases: list = GRAD_CASES

    def pytest_generate_tests(self, metafunc):
        if metafunc.function.__name__ == "test_matches_reference_values_and_gradients":
            metafunc.parametrize("case_name,seq,chunk_size", self.grad_cases)

    def test_matches_reference_values_and_gradients(self, case_name, seq, chunk_size):
        case = CASES[case_name]
        rng = np.random.default_rng(seq * 100 + chunk_size)
        x = case.inputs(rng, seq)
        # A random linear functional of all outputs and final states.
        cotangents = random_like(rng, case.output_shapes(seq))
        ref_out, ref_grad = forward_and_vjp(case_name, "reference", case.reference_chunk(chunk_size))(x, cotangents)
        out, grad = forward_and_vjp(case_name, self.backend, chunk_size)(x, cotangents)
        for i, (a, b) in enumerate(zip(out, ref_out)):
            assert_close(a, b, what=f"output {i}")
        assert set(grad) == set(x)
        for name in x:
            assert np.abs(ref_grad[name]).max() > 0, f"d/d{name} is identically zero"
            assert_close(grad[name], ref_grad[name], what=f"d/d{name}")

    # A call that continues from a final state restarts its documents from that state, not S_0.
    @pytest.mark.parametrize("case_name", [name for name in CASE_NAMES if not name.endswith("/resets")])
    def test_continuing_from_final_state_equals_one_call(self, case_name):
        case = CASES[case_name]
        x = case.inputs(np.random.default_rng(1), 37)
        whole = forward(case_name, self.backend, 4, x)
        # 21 is off the chunk grid, so the second call restarts the grid mid-chunk of the first; an
        # anchored op's chunks are part of its function, so it continues on the grid (at 20).
        cut = 20 if case.anchored else 21
        first = jit(lambda x: case.run(x, self.backend, 4))(case.split(x, 0, cut))
        second = forward(case_name, self.backend, 4, {**case.split(x, cut, 37), **case.states(first)})
        assert_close(np.concatenate([first[0], second[0]], axis=1), whole[0], what="outputs")
        for i, (a, b) in enumerate(zip(second[1:], whole[1:])):
            assert_close(a, b, what=f"final state {i}")

    @pytest.mark.parametrize("case_name", ["gated_delta_rule", "momentum_delta_rule", "anchored_memory"])
    def test_bf16_inputs(self, case_name):
        """bf16 in, forward and backward: o (and input gradients) in bf16, states fp32, values close
        to the fp32 computation."""
        case = CASES[case_name]
        rng = np.random.default_rng(2)
        x = case.inputs(rng, 37)
        cotangents = random_like(rng, case.output_shapes(37))
        out32, grad32 = forward_and_vjp(case_name, self.backend, 4)(x, cotangents)
        low = {name: jnp.asarray(a, jnp.bfloat16) for name, a in x.items()}
        cot16 = (jnp.asarray(cotangents[0], jnp.bfloat16),) + cotangents[1:]
        out16, grad16 = forward_and_vjp(case_name, self.backend, 4)(low, cot16)
        assert out16[0].dtype == jnp.bfloat16
        assert all(s.dtype == jnp.float32 for s in out16[1:])
        for i, (a, b) in enumerate(zip(out16, out32)):
            assert_close(a, b, rtol=5e-2, atol=5e-2, what=f"output {i}")
        for name in x:
            assert grad16[name].dtype == jnp.bfloat16
            assert_close(grad16[name], grad32[name], rtol=5e-2, atol=5e-2, what=f"d/d{name}")

    @pytest.mark.parametrize("case_name", ["gated_delta_rule", "momentum_delta_rule", "polysketch_attention"])
    def test_no_initial_state_is_the_zero_state(self, case_name):
        """Without initial states the op starts (and restarts documents) from zeros: outputs, final
        states and the input gradients equal those of explicit zero states (ragged T, resets)."""
        case = CASES[case_name + "/resets"]
        rng = np.random.default_rng(3)
        x = case.inputs(rng, 21)
        zeros = {**x, **{k: np.zeros_like(x[k]) for k in case.state_keys}}
        cotangents = random_like(rng, case.output_shapes(21))
        out, grad = forward_and_vjp(case_name + "/resets", self.backend, 4)(zeros, cotangents)

        def without_states(inputs, cot):
            run = lambda inputs: case.run({**inputs, **{k: None for k in case.state_keys}}, self.backend, 4)  # noqa: E731
            outputs, pullback = jax.vjp(run, inputs)
            return outputs, pullback(cot)[0]

        free = {k: v for k, v in x.items() if k not in case.state_keys}
        out_none, grad_none = jit(without_states)(free, cotangents)
        for i, (a, b) in enumerate(zip(out_none, out, strict=True)):
            assert_close(a, b, what=f"output {i}")
        for name in free:
            assert_close(grad_none[name], grad[name], what=f"d/d{name}")

"""The reference backend of every op equals the float64 NumPy loop; the other backends are checked
against the reference by the shared contract (backend_contract.py): here the pure-JAX chunked
backend, "xla"."""

from __future__ import annotations

import numpy as np
import pytest
from backend_contract import CASE_NAMES, BackendContract, forward
from kernel_cases import CASES, assert_close


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

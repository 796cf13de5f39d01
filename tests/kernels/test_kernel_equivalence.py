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
    x = case.inputs(np.random.default_rng(0), 16)
    got = forward(case_name, "reference", 64, x)
    want = case.numpy(x)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, what=f"output {i}")
    # The oracle is not trivially satisfied: the states really move and the outputs are not tiny.
    assert np.abs(want[1] - x["initial_state"]).max() > 0.1
    assert np.abs(want[0]).max() > 0.1


class TestXla(BackendContract):
    backend = "xla"

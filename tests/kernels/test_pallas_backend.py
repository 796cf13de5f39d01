"""The Pallas backend of every memory op (`kernels/pallas_chunks.py` and each op's `pallas.py`),
interpreted on CPU, meets the shared backend contract: outputs, final states and the gradients of
all inputs equal the reference across ragged T, T < chunk, T = 1, with and without initial state,
with document resets, continuing from a final state, and bf16 inputs."""

from __future__ import annotations

from backend_contract import BackendContract


class TestPallas(BackendContract):
    backend = "pallas"

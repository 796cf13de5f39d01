"""The Pallas backend of every memory op (`kernels/pallas_chunks.py` and each op's `pallas.py`),
interpreted on CPU, meets the shared backend contract: outputs, final states and the gradients of
all inputs equal the reference across ragged T, T < chunk, T = 1, with and without initial state,
with document resets, continuing from a final state, and bf16 inputs."""

from __future__ import annotations

from backend_contract import GRAD_CASES, BackendContract

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

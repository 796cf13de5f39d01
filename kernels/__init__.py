"""memzoo kernels: functional sequence-mixing ops with FLA-style conventions.

Each op lives in its own folder (`reference.py`: the token-by-token oracle; `chunked.py`: the exact
chunk-parallel pure-JAX form) and is exposed as one function whose `backend=` is "auto", a name
from the op's implementation table, or a list of names tried in order (the first available on the
platform runs). Shapes: `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`, per-token
gates `[batch, seq, heads]`, states `[batch, heads, dk, dv]`.

`IMPLEMENTATIONS[op]` is each op's table (`kernels.common.Implementations`): a new backend (a
Pallas kernel, say) is one file that registers an `Implementation` there, plus one test class that
subclasses `tests/kernels/backend_contract.py`'s `BackendContract`.

`kernels.anchored_memory` (Titans' deep memory with anchored chunk semantics: its chunk size is part
of the function) follows the same pattern, with per-layer weight states.

`kernels.polysketch_attention` is PolySketchFormer's block-causal sketched attention (training and
prefill; its state is (S `[batch, heads, r^2, dv]`, z `[batch, heads, r^2]`)).

`kernels.quantized_attention` is decode-time attention over a quantized KV cache (inference only:
no gradients); its cache lives in `kernels.quantized_attention.cache`.

`kernels.gated_delta_rule` is the function (it shadows its folder's name); the backends stay
importable by module path, e.g. `from kernels.gated_delta_rule.chunked import chunk_gated_delta_rule`.
"""

from kernels.anchored_memory import IMPLEMENTATIONS as _AM
from kernels.anchored_memory import anchored_memory
from kernels.common import Implementation, Implementations
from kernels.gated_delta_rule import IMPLEMENTATIONS as _GDR
from kernels.gated_delta_rule import gated_delta_rule
from kernels.momentum_delta_rule import IMPLEMENTATIONS as _MDR
from kernels.momentum_delta_rule import momentum_delta_rule
from kernels.polysketch_attention import IMPLEMENTATIONS as _PSA
from kernels.polysketch_attention import polysketch_attention
from kernels.quantized_attention import IMPLEMENTATIONS as _QA
from kernels.quantized_attention import quantized_attention

MEMORY_OPS = ("gated_delta_rule", "momentum_delta_rule", "anchored_memory")  # the ops memory layers run
IMPLEMENTATIONS: dict[str, Implementations] = {
    "gated_delta_rule": _GDR, "momentum_delta_rule": _MDR, "anchored_memory": _AM, "polysketch_attention": _PSA,
    "quantized_attention": _QA}

__all__ = ["IMPLEMENTATIONS", "MEMORY_OPS", "Implementation", "Implementations", "anchored_memory",
           "gated_delta_rule", "momentum_delta_rule", "polysketch_attention", "quantized_attention"]

"""memzoo kernels: functional sequence-mixing ops with FLA-style conventions.

Each op lives in its own folder (`reference.py`: the token-by-token oracle; `chunked.py`: the exact
chunk-parallel pure-JAX form) and is exposed as one function with `backend="auto" | "reference" |
"xla"`. Shapes: `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`, per-token gates
`[batch, seq, heads]`, states `[batch, heads, dk, dv]`.

`kernels.gated_delta_rule` is the function (it shadows its folder's name); the backends stay
importable by module path, e.g. `from kernels.gated_delta_rule.chunked import chunk_gated_delta_rule`.
"""

from kernels.common import BACKENDS
from kernels.gated_delta_rule import gated_delta_rule
from kernels.momentum_delta_rule import momentum_delta_rule

__all__ = ["BACKENDS", "gated_delta_rule", "momentum_delta_rule"]

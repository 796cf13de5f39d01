"""The Continuum Memory System (Nested Learning §7.1, arXiv:2512.24695; spec §5.1): a chain of MLP
levels whose parameters change at different frequencies; Hope's replacement of the MLP.

    CMS(x) = L_k(... L_2(MLP_1(x))),   L_i(z) = z + MLP_i(RMSNorm(z))   (i >= 2)

With one level it is the Transformer's MLP (spec: "the special case k = 1"). The frequencies are
the outer optimiser's (spec §5.3 reading (A)): level i's parameters, at paths `levels/<i>/`, take an
update every `periods[i]` steps from the gradients summed since the last one
(`update_groups`, applied in zoo.training.optimizer). The in-context reading (B), levels updated
at test time by gradients of the task loss, is not built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.layers.mlp import SwiGLU
from zoo.layers.norms import RMSNorm


class ContinuumMemory(nnx.Module):
    """`cms(x: [batch, seq, d_model]) -> [batch, seq, d_model]`, one SwiGLU per update period."""

    def __init__(self, d_model: int, hidden_dim: int, periods: tuple[int, ...], *, std: float, out_std: float,
                 norm_eps: float = 1e-6, dtype=jnp.float32, rngs: nnx.Rngs):
        if not periods or any(p < 1 for p in periods):
            raise ValueError(f"ContinuumMemory needs one update period >= 1 per level, got {list(periods)}")
        self.periods = tuple(periods)
        self.levels = nnx.List([SwiGLU(d_model, hidden_dim, std=std, out_std=out_std, dtype=dtype, rngs=rngs)
                                for _ in periods])
        self.norms = nnx.List([RMSNorm(d_model, eps=norm_eps, dtype=dtype) for _ in periods[1:]])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.levels[0](x)
        for level, norm in zip(list(self.levels)[1:], self.norms, strict=True):
            x = x + level(norm(x))
        return x


def update_groups(periods: tuple[int, ...], prefix: str = "") -> dict[str, int]:
    """{path regex: update period} of a ContinuumMemory's levels (`prefix`: the regex of its path,
    e.g. r"blocks/\\d+/mlp/")."""
    return {f"{prefix}levels/{i}/": p for i, p in enumerate(periods) if p != 1}

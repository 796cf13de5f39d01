"""What the fast weights are: a matrix or an MLP, as a tuple of per-layer matrices.

Every structure is a stack of linear layers p^l = a^{l-1} W^l with an activation between
layers (none for the matrix), so each per-token gradient is an outer product a^T delta per layer
(Titans spec §1.3). That is what lets one engine serve every structure.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from zoo.memory.spec import MemorySpec

Weights = tuple[jax.Array, ...]  # one matrix per layer, [d_in, d_out]


def layer_shapes(spec: MemorySpec, dk: int, dv: int) -> list[tuple[int, int]]:
    """Per-layer [d_in, d_out] of a memory mapping keys of size dk to values of size dv."""
    if spec.structure == "matrix":
        return [(dk, dv)]
    if spec.residual and dk != dv:
        raise ValueError(f"a residual mlp memory needs key dim == value dim, got {dk} and {dv}")
    hidden = spec.expansion * dk
    dims = [dk] + [hidden] * (spec.depth - 1) + [dv]
    return list(zip(dims[:-1], dims[1:], strict=True))


def init_weights(spec: MemorySpec, key: jax.Array, dk: int, dv: int) -> Weights:
    """The learned initial state W_0 (an outer parameter): zeros for a matrix (an empty
    memory), N(0, 1/d_in) for MLP layers (the last one zero when residual, so M_0(z) = z)."""
    shapes = layer_shapes(spec, dk, dv)
    if spec.structure == "matrix":
        return (jnp.zeros(shapes[0], jnp.float32),)
    keys = jax.random.split(key, len(shapes))
    weights = []
    for i, (k, (d_in, d_out)) in enumerate(zip(keys, shapes, strict=True)):
        if spec.residual and i == len(shapes) - 1:
            weights.append(jnp.zeros((d_in, d_out), jnp.float32))
        else:
            weights.append(jax.random.normal(k, (d_in, d_out), jnp.float32) / math.sqrt(d_in))
    return tuple(weights)


def activation(spec: MemorySpec, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False) if spec.activation == "gelu" else jax.nn.silu(x)


def forward(spec: MemorySpec, weights: Weights, z: jax.Array, probes: Weights | None = None
            ) -> tuple[jax.Array, list[jax.Array]]:
    """M(z; W) for `z: [n, dk]` -> (`[n, dv]`, the input activation of every layer).

    `probes` (one `[n, d_out]` zero array per layer) are added to the pre-activations, so the
    gradient of a loss w.r.t. the probes is each token's delta (Titans spec §1.3, JAX trick).
    """
    a = z
    inputs = []
    for i, w in enumerate(weights):
        inputs.append(a)
        p = a @ w
        if probes is not None:
            p = p + probes[i]
        a = activation(spec, p) if i < len(weights) - 1 else p
    if spec.structure == "mlp" and spec.residual:
        a = a + z
    return a, inputs

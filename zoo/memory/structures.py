"""What the fast weights are, as registered structures (zoo.memory.parts): a matrix, an MLP or a
gated MLP, as a tuple of per-layer matrices.

Every structure is linear layers p^l = a^l W^l connected by its body (a stack with an activation
between layers, none for the matrix; the gated MLP's two branches), so each per-token gradient is
an outer product a^T delta per layer (Titans spec §1.3). That is what lets one engine serve every
structure.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.anchored_memory.chunked import ACTIVATIONS, mlp_forward
from zoo.memory.parts import Structure, register_structure, structure
from zoo.memory.spec import MemorySpec

Weights = tuple[jax.Array, ...]  # one matrix per layer, [d_in, d_out]


def _matrix_shapes(spec: MemorySpec, dk: int, dv: int) -> list[tuple[int, int]]:
    return [(dk, dv)]


def _hidden_width(spec: MemorySpec, dk: int, dv: int) -> int:
    """`expansion * dv`: the value size sets it (a lifted key, ATLAS's phi_2, 2145 wide at d = 64,
    sets only the input); a residual memory needs dk == dv."""
    if spec.residual and dk != dv:
        raise ValueError(f"a residual {spec.structure} memory needs key dim == value dim, got {dk} and {dv}")
    return spec.expansion * dv


def _mlp_shapes(spec: MemorySpec, dk: int, dv: int) -> list[tuple[int, int]]:
    hidden = _hidden_width(spec, dk, dv)
    dims = [dk] + [hidden] * (spec.depth - 1) + [dv]
    return list(zip(dims[:-1], dims[1:], strict=True))


def _gated_mlp_shapes(spec: MemorySpec, dk: int, dv: int) -> list[tuple[int, int]]:
    hidden = _hidden_width(spec, dk, dv)
    return [(dk, hidden), (dk, hidden), (hidden, dv)]  # W_2 (gate), W_3 (up), W_1 (out)


def gated_body(layers, z: jax.Array, activation) -> jax.Array:
    """Atlas++'s memory (ATLAS Eq. 43; spec titans-atlas-tnt-hope §1.2, gated residual MLP):
    (act(z W_2) * (z W_3)) W_1, the residual z added by `finish`; `layers` = (W_2, W_3, W_1)'s maps."""
    gate, up, out = layers
    return out(activation(gate(z)) * up(z))


register_structure(Structure("matrix", _matrix_shapes, linear=True, doc="M(z) = z W, W: [dk, dv]"))
register_structure(Structure("mlp", _mlp_shapes, residual=True,
                             doc="`depth` layers of hidden width `expansion * dv`, optional z + [LN] MLP(z)"))
register_structure(Structure("gated_mlp", _gated_mlp_shapes, residual=True, body=gated_body, input_layers=2,
                             doc="Atlas++ (Eq. 43): optional z + (act(z W_2) * (z W_3)) W_1, hidden width "
                                 "`expansion * dv` (`depth` unused)"))


def layer_shapes(spec: MemorySpec, dk: int, dv: int) -> list[tuple[int, int]]:
    """Per-layer [d_in, d_out] of a memory mapping keys of size dk to values of size dv."""
    return structure(spec.structure).layer_shapes(spec, dk, dv)


def has_residual(spec: MemorySpec) -> bool:
    """Whether the memory's output is z + stack(z)."""
    return structure(spec.structure).residual and spec.residual


def init_weights(spec: MemorySpec, key: jax.Array, dk: int, dv: int, *, first_layer_std: float = 0.5,
                 last_layer_std: float = 0.0) -> Weights:
    """The learned initial state W_0 (an outer parameter). By default the memory starts empty: a
    matrix is zero, and so is an MLP's last layer, so M_0(z) = 0 (or z with the residual branch).
    `last_layer_std` > 0 draws that layer (the matrix itself) from N(0, last_layer_std^2) instead,
    for models that read W_0 before any write (Titans MAC's first segment: a zero read has an
    infinite-gain RMSNorm after it).

    The layers that read the keys (an MLP's first, a gated MLP's gate and up: `Structure.input_layers`)
    are N(0, first_layer_std^2): their inputs are L2-normalised keys, so this is the std of their
    pre-activations (0.5 keeps GELU / SiLU non-linear; the usual fan-in N(0, 1/d_in) assumes
    unit-variance entries and leaves them near-linear at 1/sqrt(d_in)). Later hidden layers use
    fan-in N(0, 1/d_in)."""
    shapes = layer_shapes(spec, dk, dv)
    input_layers = structure(spec.structure).input_layers
    keys = jax.random.split(key, len(shapes))
    weights = []
    for i, (k, (d_in, d_out)) in enumerate(zip(keys, shapes, strict=True)):
        if i == len(shapes) - 1:
            std = last_layer_std
        else:
            std = first_layer_std if i < input_layers else 1.0 / math.sqrt(d_in)
        weights.append(std * jax.random.normal(k, (d_in, d_out), jnp.float32))
    return tuple(weights)


def activation(spec: MemorySpec, x: jax.Array) -> jax.Array:
    return ACTIVATIONS[spec.activation](x)


def forward(spec: MemorySpec, weights: Weights, z: jax.Array, probes: Weights | None = None
            ) -> tuple[jax.Array, list[jax.Array]]:
    """M(z; W) for `z: [n, dk]` -> (`[n, dv]`, the input activation of every layer).

    `probes` (one `[n, d_out]` zero array per layer) are added to the pre-activations, so the
    gradient of a loss w.r.t. the probes is each token's delta (Titans spec §1.3, JAX trick).
    """
    return mlp_forward(weights, z, probes, ACTIVATIONS[spec.activation], has_residual(spec), spec.output_norm,
                       body(spec))


def body(spec: MemorySpec):
    """How the structure's layers connect (`zoo.memory.parts.Structure.body`)."""
    return structure(spec.structure).body

"""Registered parts of a memory: structures (what the fast weights are), objectives (Miras'
attentional biases), learners (inner optimisers), retentions (forgetting) and feature maps (what
queries and keys become before the memory sees them). A part declares what the engine needs to know about it, so the engine decides
exactness and the parallel form from these declarations, never from a name:

- a `Structure` gives the memory's layer shapes (every structure is a stack of linear layers with
  an activation between them, so each token's gradient is an outer product per layer), whether it
  is one linear layer (what the delta-rule kernels and channel retention need) and whether it
  honours `residual`;
- an `Objective` gives the summed per-token loss and whether its gradient depends on the weights
  (if not, even "exact" semantics take every gradient at the chunk anchor: the dual form);
- a `Learner` gives its per-token step, whether it carries a momentum buffer, and, when its
  update is linear in the token gradients, the in-chunk coefficients (m, n) the dual form uses.

- a `Retention` gives the per-token gate it reads (none, one per head, one per key channel), its
  one-token forgetting, and whether that forgetting is multiplicative (W -> l_t W: chunk products
  of decays have a closed form, so the dual form and the kernels apply; any other retention runs
  token by token).

- a `FeatureMap` gives phi and its output size (dk = out_dim(head_dim) may differ from dv).

New parts land as new files that call `register_objective` / `register_learner` /
`register_retention` / `register_structure` / `register_feature_map` (and are imported once by `zoo/memory/__init__.py`); `MemorySpec` and
`model.memory` accept every registered name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax


@dataclasses.dataclass(frozen=True)
class Objective:
    """loss(out, v) -> sum over tokens of l_i, for `out, v: [n, dv]` (the memory's outputs at the
    keys and the values)."""

    name: str
    loss: Callable[[jax.Array, jax.Array], jax.Array]
    gradient_depends_on_weights: bool
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Learner:
    """step(spec, momentum, grads, lr, log_momentum) -> (update added to the retained weights, new
    momentum) for one token (`grads`, `momentum`: one array per layer; `lr`, `log_momentum`: []).

    terms(lr, log_momentum) -> (m [C], n [C, C]) with S_r = m_r S_start - sum_i n[r, i] u_i: only
    for learners whose update is linear in the token gradients (None otherwise: such memories run
    token by token, with gradients at the anchor when anchored)."""

    name: str
    has_momentum: bool
    step: Callable
    terms: Callable | None = None
    doc: str = ""

    @property
    def linear(self) -> bool:
        return self.terms is not None


@dataclasses.dataclass(frozen=True)
class Structure:
    """layer_shapes(spec, dk, dv) -> [(d_in, d_out)] per layer, for keys of size dk and values of size dv.

    linear: one layer and no activation, M(z) = z W. residual: `spec.residual` adds z to the output."""

    name: str
    layer_shapes: Callable
    linear: bool = False
    residual: bool = False
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """apply(x) -> phi(x) for queries and keys `x: [..., d]` -> `[..., out_dim(d)]`, before their L2
    normalisation; the memory's keys then have size out_dim(head_dim), its values head_dim."""

    name: str
    apply: Callable
    out_dim: Callable[[int], int] = lambda d: d
    doc: str = ""


RETENTION_GATES = ("none", "scalar", "channel")


@dataclasses.dataclass(frozen=True)
class Retention:
    """apply(weights, log_retention) -> the retained weights before one token's write (`weights`:
    one array per layer; `log_retention`: [] for a "scalar" gate, [dk] for a "channel" gate,
    ignored for "none").

    gate: the per-token gate the mixer computes, log l_t <= 0: "none", "scalar" (one per head) or
        "channel" (one per key channel: it scales the rows of a matrix memory, `matrix_only`).
    multiplicative: apply is W -> l_t W (or its per-channel form), so in-chunk products of decays
        have the closed form the dual form and the delta-rule kernels use."""

    name: str
    gate: str
    apply: Callable
    multiplicative: bool = True
    matrix_only: bool = False
    doc: str = ""

    def __post_init__(self):
        if self.gate not in RETENTION_GATES:
            raise ValueError(f"retention {self.name!r}: gate {self.gate!r}; allowed: {', '.join(RETENTION_GATES)}")


STRUCTURES: dict[str, Structure] = {}
FEATURE_MAPS: dict[str, FeatureMap] = {}
OBJECTIVES: dict[str, Objective] = {}
LEARNERS: dict[str, Learner] = {}
RETENTIONS: dict[str, Retention] = {}


def register_objective(objective: Objective) -> Objective:
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    OBJECTIVES[objective.name] = objective
    return objective


def register_learner(learner: Learner) -> Learner:
    if learner.name in LEARNERS:
        raise ValueError(f"learner {learner.name!r} is registered twice")
    LEARNERS[learner.name] = learner
    return learner


def register_structure(structure: Structure) -> Structure:
    if structure.name in STRUCTURES:
        raise ValueError(f"structure {structure.name!r} is registered twice")
    STRUCTURES[structure.name] = structure
    return structure


def structure(name: str) -> Structure:
    if name not in STRUCTURES:
        raise ValueError(f"unknown memory structure {name!r}; registered: {', '.join(STRUCTURES)}")
    return STRUCTURES[name]


def register_feature_map(feature_map: FeatureMap) -> FeatureMap:
    if feature_map.name in FEATURE_MAPS:
        raise ValueError(f"feature map {feature_map.name!r} is registered twice")
    FEATURE_MAPS[feature_map.name] = feature_map
    return feature_map


def feature_map(name: str) -> FeatureMap:
    if name not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {name!r}; registered: {', '.join(FEATURE_MAPS)}")
    return FEATURE_MAPS[name]


def register_retention(retention: Retention) -> Retention:
    if retention.name in RETENTIONS:
        raise ValueError(f"retention {retention.name!r} is registered twice")
    RETENTIONS[retention.name] = retention
    return retention


def retention(name: str) -> Retention:
    if name not in RETENTIONS:
        raise ValueError(f"unknown memory retention {name!r}; registered: {', '.join(RETENTIONS)}")
    return RETENTIONS[name]


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown memory objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise ValueError(f"unknown memory learner {name!r}; registered: {', '.join(LEARNERS)}")
    return LEARNERS[name]

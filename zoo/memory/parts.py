"""Registered parts of a memory: objectives (Miras' attentional biases) and learners (inner
optimisers). A part declares what the engine needs to know about it, so the engine decides
exactness and the parallel form from these declarations, never from a name:

- an `Objective` gives the summed per-token loss and whether its gradient depends on the weights
  (if not, even "exact" semantics take every gradient at the chunk anchor: the dual form);
- a `Learner` gives its per-token step, whether it carries a momentum buffer, and, when its
  update is linear in the token gradients, the in-chunk coefficients (m, n) the dual form uses.

New parts land as new files that call `register_objective` / `register_learner` (and are imported
once by `zoo/memory/__init__.py`); `MemorySpec` and `model.memory` accept every registered name.
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


OBJECTIVES: dict[str, Objective] = {}
LEARNERS: dict[str, Learner] = {}


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


def objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown memory objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise ValueError(f"unknown memory learner {name!r}; registered: {', '.join(LEARNERS)}")
    return LEARNERS[name]

"""Registered parts of a memory: structures (what the fast weights are), objectives (Miras'
attentional biases), learners (inner optimisers), retentions (forgetting) and feature maps (what
queries and keys become before the memory sees them). A part declares what the engine needs to know about it, so the engine decides
exactness and the parallel form from these declarations, never from a name:

- a `Structure` gives the memory's layer shapes and how its linear layers connect (a stack with an
  activation between them, or a gated MLP's branches: either way each token's gradient is an outer
  product per layer), whether it
  is one linear layer (what the delta-rule kernels and channel retention need) and whether it
  honours `residual`;
- an `Objective` gives the summed per-token loss and whether its gradient depends on the weights
  (if not, even "exact" semantics take every gradient at the chunk anchor: the dual form);
- a `Learner` gives its per-token step, the state buffers it carries (`Buffer`: the momentum, an
  Omega window, a normaliser), the per-token gates it reads (`Gate`, registered once by name) and,
  when its update is linear in the token gradients, the in-chunk coefficients (m, n) the dual form
  uses.

- a `Retention` gives the per-token gate it reads (none, one per head, one per key channel), its
  one-token forgetting, and whether that forgetting is multiplicative (W -> l_t W: chunk products
  of decays have a closed form, so the dual form and the kernels apply; any other retention runs
  token by token).

- a `FeatureMap` gives phi and its output size (dk = out_dim(head_dim) may differ from dv).

New parts land as new files that call `register_objective` / `register_learner` /
`register_retention` / `register_structure` / `register_feature_map` / `register_gate` (and are imported once by `zoo/memory/__init__.py`); `MemorySpec` and
`model.memory` accept every registered name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from kernels.anchored_memory.chunked import chain


@dataclasses.dataclass(frozen=True)
class Objective:
    """loss(out, v, gates, spec) -> sum over tokens of l_i, for `out, v: [n, dv]` (the memory's
    outputs at the keys and the values), `gates`: {name: [n]}, the token's values of the registered
    gates (`GATES`) it declares in `gates` (e.g. Yaad's learned Huber threshold), and the
    `MemorySpec` (for its own fields, e.g. l_p's `lp_p`)."""

    name: str
    loss: Callable[..., jax.Array]
    gradient_depends_on_weights: bool
    gates: tuple[str, ...] = ()
    doc: str = ""


def like_weights(weights):
    """Zeros shaped like the weights (one array per layer): a momentum-style buffer's initial value."""
    return tuple(jnp.zeros_like(w) for w in weights)


@dataclasses.dataclass(frozen=True)
class Buffer:
    """State a part carries from token to token besides the weights (`MemState.buffers[name]`):
    init(W_0) -> its value at a document start (default: zeros shaped like the weights)."""

    name: str
    init: Callable = like_weights


@dataclasses.dataclass(frozen=True)
class Gate:
    """A per-token gate of one value per head that the mixer computes from x (one `GateHead` whose
    bias starts at bias(cfg)) for the parts that read it: value(z, cfg) maps the logits `z` to the
    gate (`cfg`: the `model.memory` config). width(spec) -> n gives n values per head and token
    instead (a trailing axis; None: one). The retention gate ("log_retention") is not one of
    these: its shape and form come from the retention's own declaration and `retention_gate`."""

    name: str
    bias: Callable
    value: Callable
    width: Callable | None = None
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Learner:
    """step(spec, buffers, grads, lr, gates) -> (update added to the retained weights, new buffers)
    for one token (`grads`: one array per layer; `buffers`: {name: value} of the buffers it
    declares; `lr`: [] the effective rho_t; `gates`: the token's gates {name: []}).

    buffers: the state it carries (e.g. the momentum S), in `MemState.buffers`.
    gates: the registered gates (`GATES`) it reads besides "lr" (which every learner reads).
    terms(lr, gates) -> (m [C], n [C, C]) with S_r = m_r S_start - sum_i n[r, i] u_i: only for
    learners whose momentum (or update) is linear in the token gradients (None otherwise: such
    memories run token by token, with gradients at the anchor when anchored). A learner with terms
    carries at most one buffer, shaped like the weights (S of the chunk form); its gates are log
    values, zeroed (a no-op) at invalid positions.
    write(S, gates) -> the update added to the retained weights, per weight matrix, for a learner
    with terms whose write is a non-linear function of its momentum (Muon: eta_t NS_5(S), eta_t one
    of the token's learner gates `gates`); None: the
    update is S itself (or, without a buffer, -rho u). With a write, the chunk form materialises S
    at every position (`kernels.anchored_memory.chunked.positionwise_read`)."""

    name: str
    step: Callable
    buffers: tuple[Buffer, ...] = ()
    gates: tuple[str, ...] = ()
    terms: Callable | None = None
    write: Callable | None = None
    doc: str = ""

    def __post_init__(self):
        if self.terms is not None and (len(self.buffers) > 1 or any(b.init is not like_weights for b in self.buffers)):
            raise ValueError(f"learner {self.name!r} has chunk terms, so its only state is S of the chunk form: "
                             "at most one buffer, shaped like the weights")
        if self.write is not None and (self.terms is None or len(self.buffers) != 1):
            raise ValueError(f"learner {self.name!r}: a write of the momentum needs the momentum's chunk terms "
                             "and its one weight-shaped buffer")

    @property
    def linear(self) -> bool:
        """The update is linear in the token gradients (the dual form's coefficients describe it)."""
        return self.terms is not None and self.write is None

    @property
    def dual_state(self) -> str | None:
        """The buffer the chunk form carries as S (learners with terms), or None."""
        return self.buffers[0].name if self.terms is not None and self.buffers else None


@dataclasses.dataclass(frozen=True)
class Structure:
    """layer_shapes(spec, dk, dv) -> [(d_in, d_out)] per layer, for keys of size dk and values of size dv.

    linear: one layer and no activation, M(z) = z W. residual: `spec.residual` adds z to the output
    and `spec.output_norm` puts a LayerNorm before it. body(layers, z, activation): how the layers
    connect, each `layers[l](x)` being x W^l (`kernels.anchored_memory.chunked.chain`, a stack, by
    default); the engine's exact, dual and per-position reads all go through it, so a structure
    whose layers are not a chain (the gated MLP) is one registration. input_layers: how many
    leading layers read the keys themselves (their initial std is the first layer's)."""

    name: str
    layer_shapes: Callable
    linear: bool = False
    residual: bool = False
    body: Callable = chain
    input_layers: int = 1
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """apply(x) -> phi(x) for queries and keys `x: [..., d]` -> `[..., out_dim(d)]`, before their L2
    normalisation; the memory's keys then have size out_dim(head_dim), its values head_dim.

    coefficients: the initial values of the map's learned coefficients (ATLAS's polynomial a_i),
    or () for a map without parameters. The mixer keeps them per head as `[heads, n]` and the map
    is then called as apply(x, coefficients) (`__call__` picks the form)."""

    name: str
    apply: Callable
    out_dim: Callable[[int], int] = lambda d: d
    coefficients: tuple[float, ...] = ()
    doc: str = ""

    def __call__(self, x: jax.Array, coefficients: jax.Array | None = None) -> jax.Array:
        return self.apply(x, coefficients) if self.coefficients else self.apply(x)


RETENTION_GATES = ("none", "scalar", "channel")


@dataclasses.dataclass(frozen=True)
class Retention:
    """apply(weights, log_retention) -> the retained weights before one token's write (`weights`:
    one array per layer; `log_retention`: [] for a "scalar" gate, [sum_l d_in_l] for a "channel"
    gate, ignored for "none").

    gate: the per-token gate the mixer computes, log l_t <= 0: "none", "scalar" (one per head) or
        "channel" (one per input channel of every layer: the rows of each weight matrix).
    matrix_only: the retention needs a one-matrix memory (Lattice's slots).
    multiplicative: apply is W -> l_t W (or its per-channel form), so in-chunk products of decays
        have the closed form the dual form and the delta-rule kernels use.
    view(spec, state) -> the weights the memory reads and takes its gradients at, when the state
        is not the weights themselves (Moneta's accumulator A, read as W = A / ||A||_q^(q-2);
        Memora's log-weights L, read as a per-slice softmax); `of_weights(spec, W)` maps the
        learned initial parameter to the state a document starts from (Moneta: the A whose view
        is W_0; Memora: the logits themselves). None: the state is W. The chunk form of a memory
        with a view materialises the state at every position and reads each query through its
        own position's view (`positionwise_read`).
    riemannian: the view is a manifold the state lives on (Lattice's unit-norm slots): gradients
        are taken through the view (the weight gradient pulled back by the view's VJP at the
        gradient point, a Riemannian gradient on the manifold) instead of applied to the state
        as they are, and the state is retracted onto the manifold (state <- view(state)) at the
        end of every chunk; it needs a view and no forgetting gate.
    normal_gate(point, update) -> [dk]: a riemannian retention's other chunk form (Lattice's GLA
        form, spec miras-lattice-trellis §2.5): an update taken at the anchor's view `point` (one
        matrix `[dk, dv]`) is written as it is, and its normal part at the anchor becomes one factor
        per key channel (row) that scales the running state, W_t = Diag(a_t) W_{t-1} + U_t, instead of
        being projected away at the anchor (W_t = W_{t-1} + pullback(U_t): the tangent form, None).
        The factors may have any sign and exceed 1 (no logs: in-chunk products are direct)."""

    name: str
    gate: str
    apply: Callable
    multiplicative: bool = True
    matrix_only: bool = False
    view: Callable | None = None
    of_weights: Callable | None = None
    riemannian: bool = False
    normal_gate: Callable | None = None
    doc: str = ""

    def __post_init__(self):
        if self.gate not in RETENTION_GATES:
            raise ValueError(f"retention {self.name!r}: gate {self.gate!r}; allowed: {', '.join(RETENTION_GATES)}")
        if (self.view is None) != (self.of_weights is None):
            raise ValueError(f"retention {self.name!r}: a view needs its inverse (view and of_weights together)")
        if self.riemannian and (self.view is None or self.gate != "none"):
            raise ValueError(f"retention {self.name!r}: a riemannian retention needs a view and gate 'none'")
        if self.normal_gate is not None and not (self.riemannian and self.matrix_only):
            raise ValueError(f"retention {self.name!r}: a normal gate (the GLA chunk form) needs a riemannian "
                             "retention of a matrix memory (matrix_only)")


class Registry(dict):
    """Parts of one kind by name: `register(part)` adds one (a name only once), `get_part(name)`
    returns it or raises a ValueError that lists the registered names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, part):
        if part.name in self:
            raise ValueError(f"{self.kind} {part.name!r} is registered twice")
        self[part.name] = part
        return part

    def get_part(self, name: str):
        if name not in self:
            raise ValueError(f"unknown memory {self.kind} {name!r}; registered: {', '.join(self)}")
        return self[name]


STRUCTURES = Registry("structure")
FEATURE_MAPS = Registry("feature map")
GATES = Registry("gate")
OBJECTIVES = Registry("objective")
LEARNERS = Registry("learner")
RETENTIONS = Registry("retention")

register_structure, structure = STRUCTURES.register, STRUCTURES.get_part
register_feature_map, feature_map = FEATURE_MAPS.register, FEATURE_MAPS.get_part
register_gate, gate = GATES.register, GATES.get_part
register_objective, objective = OBJECTIVES.register, OBJECTIVES.get_part
register_learner, learner = LEARNERS.register, LEARNERS.get_part
register_retention, retention = RETENTIONS.register, RETENTIONS.get_part

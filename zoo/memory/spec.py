"""MemorySpec: the static description of one associative memory (DESIGN §3).

A memory is fast weights W written by a per-token rule and read by a query. The spec fixes
what W is (structure), what each write minimises (objective, the Miras "attentional bias"),
how W forgets (retention), how the inner optimiser steps (learner), and whether chunks use the
exact per-token rule or gradients anchored at the chunk start (semantics).
"""

from __future__ import annotations

import dataclasses

import kernels
from kernels.anchored_memory.chunked import ACTIVATIONS as MEMORY_ACTIVATIONS
from zoo.memory import compression, parts

SEMANTICS = ("exact", "anchored")
WINDOW_GATES = ("token", "lag")
BILEVEL = ("full", "first_order")
GRADIENT_POINTS = ("previous", "retained")
READS = ("forward", "transposed")
COMPRESSION_MAPS = tuple(compression.COMPRESSION_MAPS)  # phi of Trellis's compression objective
ACTIVATIONS = tuple(MEMORY_ACTIVATIONS)


@dataclasses.dataclass(frozen=True)
class MemorySpec:
    """Static and hashable, so it can sit in a Flax module and in jit's static arguments.

    structure: a registered structure (zoo.memory.parts.STRUCTURES): "matrix" (W: [dk, dv],
        M(z) = z W) or "mlp" (`depth` layers, hidden width
        `expansion * dv` (the value size), `activation` between layers, optional residual z + MLP(z), optional
        `output_norm`: a parameter-free LayerNorm on the MLP's output, z + LN(MLP(z)) (Miras §1.5.1)) or
        "gated_mlp" (Atlas++, ATLAS Eq. 43: (act(z W_2) * (z W_3)) W_1, hidden width `expansion * dv`,
        the same residual and output_norm options).
    objective: a registered objective (zoo.memory.parts.OBJECTIVES): "l2" = ||M(k) - v||^2 summed
        over features (Titans Eq. 12); "dot" = -<M(k), v> (Hebbian / linear attention; its gradient
        does not depend on W); "huber" (zoo.memory.huber: Yaad's, with a learned threshold gate); "lp"
        (zoo.memory.lp: the smoothed l_p bias with p = `lp_p`).
    retention: a registered retention (zoo.memory.parts.RETENTIONS): "none", "scalar" (one decay
        per head and token, Titans' 1 - alpha_t) or "channel" (one decay per input channel of every
        layer: a matrix memory's key channels, an MLP's key and hidden channels) or "lq" (zoo.memory.lq, Moneta: a scalar decay on an accumulator A read as
        W = A / ||A||_q^(q-2), q = `lq_q`) or "kl" (zoo.memory.kl, Memora: softmax of log-weights) or
        "elastic_net" (zoo.memory.elastic_net: the soft threshold of an accumulator, gamma =
        `elastic_threshold`).
    learner: a registered learner (zoo.memory.parts.LEARNERS): "gd" (W_t = l_t W_{t-1} - rho_t u_t),
        "momentum" (S_t = mu_t S_{t-1} - rho_t u_t, W_t = l_t W_{t-1} + S_t; Titans Eq. 13-14) or
        "muon" (zoo.memory.muon: Newton-Schulz on the momentum; runs token by token).
    semantics: "exact" (gradient at W_{t-1} for every token) or "anchored" (every token of a
        chunk takes its gradient at the chunk-start weights; Titans Eq. 16-18): then
        `chunk_size` is part of the model.
    bilevel: "full" (outer gradients flow through the inner gradients, second order) or
        "first_order" (stop_gradient on the anchor weights inside the inner gradient).
    gradient_at: where the inner gradient is taken: "previous" (Titans Eq. 13-14: at W_{t-1},
        or at the chunk anchor when anchored) or "retained" (Gated DeltaNet: at the forgotten
        weights l_t W_{t-1}, so the delta step acts on the decayed state; exact semantics only).
    window: the Omega rule's window c (ATLAS Eq. 9; zoo.memory.window): each write descends the
        loss of the last c tokens, each weighted by its "window_weight" gate (`window_gates:
        token`) or by the step's weight for its lag ("window_lag_weights", `window_gates: lag`);
        1 = the token alone.
    max_grad_norm: tau > 0 clips each token's inner gradient to Frobenius norm tau (rho_t is
        scaled by min(1, tau / ||u_t||)); 0 = off. A deep memory's inner gradient grows with
        ||W||^2, so unclipped writes can blow up within one long document (docs/fidelity.md).
    kernel_chunk: the tile of the `kernels` op an exact memory runs on (`delta_kernel`): how the
        kernel computes, not what; separate from `chunk_size`, which anchored memories' results
        depend on.
    kernel_backend: that op's backend: "auto", a name in its `kernels.IMPLEMENTATIONS` table, or
        a comma-separated list tried in order (the first available on the platform runs).
    compression_map: phi of the "compression" objective 1/2 ||phi(M(k)) - v||^2 (Trellis, spec
        §3.3; zoo.memory.compression): "ln_silu", "l2_silu", "silu" or "identity".
    read: "forward" (y = M(q; W) = q W) or "transposed" (y = W q for `q: [dv]` -> `[dk]`: the
        decoder read of Trellis's value memory, V^T r, spec §3.6 step 4; one matrix layer only).
        Not a config field: the model that owns the memory sets it.
    """

    structure: str = "mlp"
    depth: int = 2
    expansion: int = 4
    residual: bool = False
    output_norm: bool = False
    activation: str = "gelu"
    objective: str = "l2"
    lp_p: float = 3.0
    retention: str = "scalar"
    lq_q: float = 4.0
    elastic_threshold: float = 0.01
    learner: str = "momentum"
    semantics: str = "anchored"
    chunk_size: int = 16
    bilevel: str = "full"
    gradient_at: str = "previous"
    window: int = 1
    window_gates: str = "token"
    max_grad_norm: float = 0.0
    kernel_chunk: int = 64
    kernel_backend: str = "auto"
    compression_map: str = "ln_silu"
    read: str = "forward"

    @classmethod
    def of(cls, config) -> MemorySpec:
        """The spec of any object with the spec's fields as attributes (a `model.memory` config);
        fields the object lacks (`read`, which the owning model sets) keep their defaults."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})

    def __post_init__(self):
        for name, allowed in [("structure", tuple(parts.STRUCTURES)), ("objective", tuple(parts.OBJECTIVES)),
                              ("retention", tuple(parts.RETENTIONS)), ("learner", tuple(parts.LEARNERS)),
                              ("semantics", SEMANTICS), ("bilevel", BILEVEL),
                              ("gradient_at", GRADIENT_POINTS), ("window_gates", WINDOW_GATES),
                              ("activation", ACTIVATIONS), ("read", READS),
                              ("compression_map", COMPRESSION_MAPS)]:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"MemorySpec.{name}={value!r}; allowed: {', '.join(allowed)}")
        if self.lp_p < 1:
            raise ValueError(f"MemorySpec.lp_p must be >= 1 (the l_p bias), got {self.lp_p}")
        if self.lq_q <= 1 or self.lq_q == 3:
            raise ValueError(f"MemorySpec.lq_q must be > 1 and not 3 (Moneta's W_0 = A_0 / ||A_0||_q^(q-2) has no "
                             f"inverse at q = 3), got {self.lq_q}")
        if self.elastic_threshold < 0:
            raise ValueError(f"MemorySpec.elastic_threshold must be >= 0 (the soft threshold gamma), "
                             f"got {self.elastic_threshold}")
        if self.max_grad_norm < 0:
            raise ValueError(f"MemorySpec.max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        for name in ("chunk_size", "kernel_chunk", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemorySpec.{name} must be >= 1, got {getattr(self, name)}")
        backends = {name for op in kernels.MEMORY_OPS for name in kernels.IMPLEMENTATIONS[op]} | {"auto"}
        names = self.kernel_backends
        names = (names,) if names == "auto" else names
        if not names or any(n not in backends for n in names) or ("auto" in names and len(names) > 1):
            raise ValueError(f"MemorySpec.kernel_backend={self.kernel_backend!r}: allowed are 'auto', "
                             f"{', '.join(map(repr, sorted(backends - {'auto'})))}, or a comma-separated list of them")
        if not parts.structure(self.structure).linear and (self.depth < 1 or self.expansion < 1):
            raise ValueError(f"an mlp memory needs depth >= 1 and expansion >= 1, got {self.depth}, {self.expansion}")
        if self.output_norm and not parts.structure(self.structure).residual:
            raise ValueError(f"output_norm (LayerNorm on the memory's output) needs an mlp-like structure, "
                             f"not {self.structure!r}")
        if self.window > 1 and (self.gradient_at == "retained" or parts.retention(self.retention).view is not None):
            raise ValueError(f"window={self.window} (the Omega rule) takes its gradients at W_t-1 or the chunk anchor "
                             "of the weights themselves: not with gradient_at='retained' or a retention view (lq)")
        if self.gradient_at == "retained" and self.semantics != "exact":
            raise ValueError("gradient_at='retained' (the gradient at the decayed weights, Gated DeltaNet) "
                             "needs semantics='exact'")
        for kind, part in (("learner", parts.learner(self.learner)), ("objective", parts.objective(self.objective))):
            for name in part.gates:
                if name not in parts.GATES:
                    raise ValueError(f"{kind} {part.name!r} reads gate {name!r}, which is not registered "
                                     f"(parts.register_gate); registered: {', '.join(parts.GATES)}")
        if parts.retention(self.retention).matrix_only and not parts.structure(self.structure).linear:
            raise ValueError(f"retention={self.retention!r} works on the slots of a matrix memory; "
                             "use structure='matrix'")
        if self.read == "transposed":
            forget, part = parts.retention(self.retention), parts.learner(self.learner)
            if not (parts.structure(self.structure).linear and self.window == 1 and forget.gate != "channel"
                    and forget.view is None and part.write is None):
                raise ValueError("read='transposed' (y = W q, Trellis's value read) needs one matrix layer, window=1, "
                                 "no channel retention and no per-position state (a retention view or a learner's "
                                 f"write); got structure={self.structure!r}, window={self.window}, "
                                 f"retention={self.retention!r}, learner={self.learner!r}")

    @property
    def kernel_backends(self) -> str | tuple[str, ...]:
        """`kernel_backend` as the kernels take it: "auto", or the names in order."""
        names = tuple(n.strip() for n in self.kernel_backend.split(",") if n.strip())
        return "auto" if names == ("auto",) else names

    @property
    def num_layers(self) -> int:
        """The number of weight matrices (the layer count does not depend on the key and value sizes)."""
        return len(parts.structure(self.structure).layer_shapes(self, 1, 1))

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The per-token gates this memory reads: "lr", the retention's "log_retention" (unless its
        gate is "none"), the learner's own (`parts.Learner.gates`), the objective's
        (`parts.Objective.gates`) and the Omega window's weights (window > 1)."""
        retention = () if parts.retention(self.retention).gate == "none" else ("log_retention",)
        window = ((("window_weight",) if self.window_gates == "token" else ("window_lag_weights",))
                  if self.window > 1 else ())
        return ("lr",) + retention + parts.learner(self.learner).gates + parts.objective(self.objective).gates + window

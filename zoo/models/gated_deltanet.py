"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv:2412.06464): the recall baseline of the
Titans, Miras and ATLAS tables, as one registration on the shared memory engine.

The layer is the shared memory mixer (q, k, v projections, short conv, SiLU, L2-normalised q
and k, per-head RMSNorm and SiLU output gate) with a matrix memory and the gated delta rule

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,    o_t = S_t^T q_t        (GDN Eq. 10)

which in the engine's vocabulary is: l2 objective, plain gradient descent, exact semantics and
the inner gradient taken at the retained weights a_t S_{t-1} (`gradient_at="retained"`), with
b_t = 2 rho_t (Eq. 12's sum convention) so lr_max = 0.5 gives b_t = sigmoid(.) as in GDN, and
a_t = sigmoid retention (GDN's Mamba-2 decay exp(-A softplus(x w + dt_bias)) is
`retention_gate="mamba2"`; the defaults' inits are measured, see GDN_MEMORY). Training runs
`kernels.gated_delta_rule` (token by token while packed documents need resets). The block is
the memory block of Titans LMM: x + GDN(Norm x), then x + SwiGLU(Norm x).
"""

from __future__ import annotations

from flax import nnx

from zoo.config import ModelConfig
from zoo.models.lm import LanguageModel
from zoo.models.memory_block import memory_language_model
from zoo.registry import register

PAPER = "Yang, Kautz, Hatamizadeh 2024, Gated Delta Networks: Improving Mamba2 with Delta Rule (arXiv:2412.06464)"

# lr_init 0.05 and the sigmoid retention gate (forget_init 0.01) instead of FLA's beta = 0.5 and
# Mamba-2 decay at init: measured on MQAR (docs/fidelity.md "Gated DeltaNet"); FLA's init is
# retention_gate="mamba2", lr_init=0.25.
GDN_MEMORY = dict(structure="matrix", objective="l2", learner="gd", semantics="exact", gradient_at="retained",
                  retention="scalar", retention_gate="sigmoid", lr_max=0.5, lr_init=0.05, chunk_size=64,
                  max_grad_norm=0.0)  # unit keys and beta < 1 bound the delta rule's step


@register("gated_deltanet", family="Gated DeltaNet", paper=PAPER, tiny_config="configs/gated_deltanet/tiny.yaml",
          uses_memory=True, memory_defaults=GDN_MEMORY)
def build_gated_deltanet(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    if cfg.memory.gradient_at != "retained" or cfg.memory.structure != "matrix":
        raise ValueError("gated_deltanet is the gated delta rule: model.memory needs structure=matrix and "
                         "gradient_at=retained (a config file gets them from the registry; in Python build the "
                         "memory with zoo.registry.memory_config('gated_deltanet', ...))")
    return memory_language_model(cfg, rngs)

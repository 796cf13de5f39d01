"""A Muon inner optimiser (ATLAS, Behrouz et al. 2025, App. D.4 Eq. 57-58; Muon, Jordan et al.
2024), a registered part:

    S_t = mu_t S_{t-1} - rho_t u_t            (momentum of the surprise, step sizes inside)
    W_t = l_t W_{t-1} + eta_t NS_k(S_t)       (the outer step eta_t outside Newton-Schulz)

NS_k pushes each 2-D weight matrix's singular values towards 1 with k Newton-Schulz iterations
(X_0 = S / (||S||_F + eps), transposed to be wide; X <- a X + (b A + c A^2) X with A = X X^T and
(a, b, c) = (3.4445, -4.7750, 2.0315)). k = 0 means NS_0(S) = S (no normalisation), so
`muon_learner(steps=0, outer_lr=1)` is exactly the momentum learner. The update is not linear in
the token gradients, but the momentum is: the chunk form (gradients at the chunk anchor) keeps
the momentum learner's coefficients for S and materialises S at every position, then applies NS
to all of them at once (`Learner.write`; ATLAS §3.6 step 4). Registered as "muon": NS-5 with
ATLAS's data-dependent eta_t, a gate of the token ("muon_lr": eta_t = muon_lr_max sigmoid(x w + b),
starting at `model.memory.muon_lr_init` = 0.01); `muon_learner(outer_lr=...)` builds the variant
with a constant eta (its NS-0 form with eta = 1 is the momentum learner: tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoo.layers.gates import logit
from zoo.memory.learners import MOMENTUM, momentum_terms, momentum_update
from zoo.memory.parts import Gate, Learner, register_gate, register_learner

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(s, steps: int, eps: float = 1e-7):
    """NS_steps of one matrix `s: [m, n]` (float32); steps = 0 returns s unchanged."""
    if steps == 0:
        return s
    a, b, c = NS_COEFFICIENTS
    tall = s.shape[0] > s.shape[1]
    x = s.T if tall else s
    x = x / (jnp.sqrt(jnp.sum(x * x) + 1e-30) + eps)  # ||x||_F, with a finite gradient at S = 0 (an
    # MLP memory whose last layer starts at zero writes nothing to its first layer's momentum at first)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


# eta_t = muon_lr_max * sigmoid(z), starting at muon_lr_init (ATLAS App. D.4's data-dependent eta_t)
register_gate(Gate("muon_lr", bias=lambda cfg: logit(cfg.muon_lr_init / cfg.muon_lr_max),
                   value=lambda z, cfg: cfg.muon_lr_max * jax.nn.sigmoid(z), doc="eta_t = muon_lr_max sigmoid(z)"))


def muon_learner(name: str, *, steps: int, outer_lr: float | None = None) -> Learner:
    """Muon with NS_steps; the outer step is the token's "muon_lr" gate eta_t, or the constant
    `outer_lr` when given."""
    def write(s, gates):
        return (gates["muon_lr"] if outer_lr is None else outer_lr) * newton_schulz(s, steps)

    def step(spec, buffers, grads, lr, gates):
        new_momentum = momentum_update(buffers["momentum"], grads, lr, gates["log_momentum"])
        return tuple(write(s, gates) for s in new_momentum), {"momentum": new_momentum}

    gates = ("log_momentum",) if outer_lr is not None else ("log_momentum", "muon_lr")
    eta = "eta_t (gate muon_lr)" if outer_lr is None else f"eta {outer_lr}"
    return Learner(name, step=step, buffers=(MOMENTUM,), gates=gates, terms=momentum_terms, write=write,
                   doc=f"Muon: momentum, then {steps} Newton-Schulz steps, outer step {eta}")


register_learner(muon_learner("muon", steps=5))

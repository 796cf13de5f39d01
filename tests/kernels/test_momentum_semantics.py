"""What `momentum_delta_rule` means: "no momentum" is the limit mu -> 0, and (Titans App. C) the
no-momentum Titans update is not the gated delta rule unless nothing decays."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from kernel_cases import CASES, assert_close, jit

import kernels


def test_no_momentum_flag_is_the_vanishing_momentum_limit():
    case = CASES["momentum_delta_rule"]
    x = case.inputs(np.random.default_rng(3), 11)
    no_mom = {name: a for name, a in x.items() if name not in ("log_momentum", "initial_momentum")}

    @jit
    def runs(x, no_mom):
        return (case.run(no_mom, "xla", 4),
                case.run({**x, "log_momentum": jnp.full_like(x["log_momentum"], -60.0)}, "xla", 4),
                case.run({**x, "log_momentum": jnp.zeros_like(x["log_momentum"])}, "xla", 4))

    (o_none, w_none), (o_zero, w_zero, _), (o_full, _, _) = runs(x, no_mom)
    assert_close(o_none, o_zero, what="outputs")
    assert_close(w_none, w_zero, what="final state")
    # ... and not the mu = 1 end: momentum really matters for these inputs.
    assert np.abs(o_full - o_none).max() > 1e-2


def _titans_and_gdn(x, log_decay, chunk_size):
    """No-momentum Titans with lambda = exp(log_decay) and GDN with alpha = exp(log_decay), lr = beta."""
    o_t, (w_t, s_t) = kernels.momentum_delta_rule(x["q"], x["k"], x["v"], x["beta"], log_decay, None,
                                                  initial_state=x["initial_state"], output_final_state=True,
                                                  chunk_size=chunk_size)
    o_g, s_g = kernels.gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], log_decay,
                                        initial_state=x["initial_state"], output_final_state=True,
                                        chunk_size=chunk_size)
    assert s_t is None
    return o_t, w_t, o_g, s_g


def test_titans_without_momentum_is_not_the_gated_delta_rule():
    """Titans takes the gradient at the undecayed W: W_1 = (l I - b k k^T) W_0 + b k v^T, while GDN
    gives l (I - b k k^T) S_0 + b k v^T, so W_1 - S_1 = -b (1 - l) k k^T W_0 after one token."""
    case = CASES["gated_delta_rule"]
    x = case.inputs(np.random.default_rng(4), 9)
    log_decay = np.full_like(x["g"], np.log(0.7))
    run = jit(lambda x, g: _titans_and_gdn(x, g, 4))
    _, w_t, _, s_g = run(case.split(x, 0, 1), log_decay[:, :1])
    k, b, w0 = x["k"][:, 0], x["beta"][:, 0], x["initial_state"]
    want = -(b * (1 - 0.7))[..., None, None] * np.einsum("bhi,bhj,bhjv->bhiv", k, k, w0)
    assert_close(w_t - s_g, want, what="one-token difference")
    assert np.abs(want).max() > 1e-2
    o_t, w_t, o_g, s_g = run(x, log_decay)
    assert np.abs(o_t - o_g).max() > 1e-2
    assert np.abs(w_t - s_g).max() > 1e-2


def test_titans_without_momentum_or_decay_is_the_delta_rule():
    x = CASES["gated_delta_rule"].inputs(np.random.default_rng(5), 9)
    o_t, w_t, o_g, s_g = jit(lambda x, g: _titans_and_gdn(x, g, 4))(x, np.zeros_like(x["g"]))
    assert_close(o_t, o_g, what="outputs")
    assert_close(w_t, s_g, what="final state")
    assert np.abs(o_t).max() > 1e-1

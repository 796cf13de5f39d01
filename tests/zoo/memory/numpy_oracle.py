"""An independent NumPy oracle of a matrix memory's per-token rule, written from the equations
(Titans Eq. 12-15, Miras' Huber bias, ATLAS App. D.4 for Muon), not from the engine's code.

    out = k W*        W* = W_{t-1} (exact) or the weights at the chunk start (anchored)
    u   = outer(k, dl/dout)       l2: 2r (r = out - v); dot: -v; lp: 3 r |r|;
                                  huber: 2r if ||r|| <= delta_t, else 2 delta_t tanh(10 r)
    retained = l_t W_{t-1}
    gd:       W = retained - rho u
    momentum: S = mu S - rho u;  W = retained + S
    muon:     S = mu S - rho u;  W = retained + eta_t NS_5(S)
    y = q W                       (read after write)
With an Omega window c (ATLAS Eq. 9-11), u is sum over the last c tokens i of the same document of
gamma_i min(1, tau / ||u_i||) u_i, every u_i at W*.
"""

from __future__ import annotations

import numpy as np

NS = (3.4445, -4.7750, 2.0315)


def newton_schulz(s: np.ndarray, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    a, b, c = NS
    x = s.T if s.shape[0] > s.shape[1] else s
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if s.shape[0] > s.shape[1] else x


def output_gradient(objective: str, out: np.ndarray, v: np.ndarray, delta: float = 1.0) -> np.ndarray:
    r = out - v
    if objective == "l2":
        return 2 * r
    if objective == "dot":
        return -v
    if objective == "huber":  # Miras Eq. 16 (Yaad), sign(r) smoothed as tanh(10 r), our l2 scale (2 r)
        return 2 * r if np.linalg.norm(r) <= delta else 2 * delta * np.tanh(10 * r)
    if objective == "lp":  # Miras Eq. 11 with p = 3, |r| smoothed as sqrt(r^2 + 1e-6)
        return 3 * r * np.sqrt(r * r + 1e-6)
    raise ValueError(objective)


def matrix_memory(objective: str, learner: str, semantics: str, chunk: int, w0, q, k, v, lr, log_ret, log_mu,
                  muon_lr=None, retain=None, huber_delta=None, view=None, window: int = 1,
                  gamma=None, max_grad_norm: float = 0.0, segment_ids=None, lag_gamma=None):
    """Token by token in float64. `retain(W, log l_t)` replaces the scalar decay l_t W when given;
    `huber_delta [T]`: Huber's per-token threshold; `view(W)`: the weights the state reads as and
    takes gradients at (Moneta's A / ||A||_q^(q-2)); `window` c with weights `gamma [T]` (or per step
    and lag, `lag_gamma [T, c]`: token i in step t's window weighs lag_gamma[t, t - i]) and each
    token's gradient clipped to `max_grad_norm` (> 0); `muon_lr [T]`: Muon's eta_t; `segment_ids [T]`: documents restart from w0
    (and their chunk grid: the engine's dual form needs them on it). Returns (y [T, dv], final W, final S)."""
    view = view or (lambda x: x)
    w = np.asarray(w0, np.float64)
    s = np.zeros_like(w)
    anchor = w.copy()
    ys = []
    seg = np.ones(q.shape[0], int) if segment_ids is None else np.asarray(segment_ids)
    start = 0
    for t in range(q.shape[0]):
        if t > 0 and seg[t] != seg[t - 1]:
            w, s, start = np.asarray(w0, np.float64), np.zeros_like(w), t
            anchor = w.copy()
        at = w if semantics == "exact" else anchor

        def gradient(i):
            delta = 1.0 if huber_delta is None else huber_delta[i]
            u = np.outer(k[i], output_gradient(objective, k[i] @ view(at), v[i], delta))
            if max_grad_norm > 0:
                u = u * min(1.0, max_grad_norm / np.linalg.norm(u))
            if window == 1:
                return u
            return (gamma[i] if lag_gamma is None else lag_gamma[t, t - i]) * u

        u = sum(gradient(i) for i in range(max(start, t - window + 1), t + 1))
        retained = np.exp(log_ret[t]) * w if retain is None else retain(w, log_ret[t])
        if learner == "gd":
            w = retained - lr[t] * u
        else:
            s = np.exp(log_mu[t]) * s - lr[t] * u
            w = retained + (s if learner == "momentum" else muon_lr[t] * newton_schulz(s))
        if (t + 1 - start) % chunk == 0:
            anchor = w.copy()
        ys.append(q[t] @ view(w))
    return np.stack(ys), w, s

"""Shared test material for `kernels/`: float64 NumPy loops written straight from the equations,
random well-conditioned inputs, and one `OpCase` per op variant so every test runs over all ops.

Shapes are declared once here: batch 2, heads 2, dk 8, dv 6 (dk != dv on purpose)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import numpy as np

import kernels

BATCH, HEADS, DK, DV = 2, 2, 8, 6
HIDDEN = 12  # the anchored memory's hidden width

# Tests check the math of the HLO graph, which LLVM's optimisation level does not change; level 0
# roughly halves the compile time that dominates this suite on a small CPU.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def gated_delta_rule_numpy(q, k, v, beta, g, initial_state, scale, starts=None):
    """S <- exp(g_t) S;  S <- S + beta_t k_t (v_t - S^T k_t)^T;  o_t = scale q_t^T S (float64);
    S <- S_0 first where `starts[b, t]` (a packed document begins)."""
    q, k, v, beta, g, initial_state = (np.asarray(x, np.float64) for x in (q, k, v, beta, g, initial_state))
    batch, seq, heads, _ = q.shape
    o = np.zeros(v.shape)
    final = np.zeros(initial_state.shape)
    for b in range(batch):
        for h in range(heads):
            s = initial_state[b, h].copy()
            for t in range(seq):
                if starts is not None and starts[b, t]:
                    s = initial_state[b, h].copy()
                s = np.exp(g[b, t, h]) * s
                s = s + beta[b, t, h] * np.outer(k[b, t, h], v[b, t, h] - s.T @ k[b, t, h])
                o[b, t, h] = scale * q[b, t, h] @ s
            final[b, h] = s
    return o, final


def momentum_delta_rule_numpy(q, k, v, lr, log_retention, log_momentum, initial_state, initial_momentum, scale,
                              starts=None):
    """e_t = k_t^T W_{t-1} - v_t, u_t = k_t e_t^T, S_t = mu_t S_{t-1} - lr_t u_t,
    W_t = lambda_t W_{t-1} + S_t, o_t = scale q_t^T W_t; without momentum (log_momentum None)
    W_t = lambda_t W_{t-1} - lr_t u_t (float64); (W, S) <- (W_0, S_0) first where `starts[b, t]`.
    Returns (o, W_T) or (o, W_T, S_T)."""
    q, k, v, lr, log_retention, initial_state = (
        np.asarray(x, np.float64) for x in (q, k, v, lr, log_retention, initial_state))
    momentum = log_momentum is not None
    if momentum:
        log_momentum, initial_momentum = (np.asarray(x, np.float64) for x in (log_momentum, initial_momentum))
    batch, seq, heads, _ = q.shape
    o = np.zeros(v.shape)
    final_w = np.zeros(initial_state.shape)
    final_s = np.zeros(initial_state.shape)
    for b in range(batch):
        for h in range(heads):
            w = initial_state[b, h].copy()
            s = initial_momentum[b, h].copy() if momentum else None
            for t in range(seq):
                if starts is not None and starts[b, t]:
                    w = initial_state[b, h].copy()
                    s = initial_momentum[b, h].copy() if momentum else None
                u = np.outer(k[b, t, h], k[b, t, h] @ w - v[b, t, h])
                if momentum:
                    s = np.exp(log_momentum[b, t, h]) * s - lr[b, t, h] * u
                    w = np.exp(log_retention[b, t, h]) * w + s
                else:
                    w = np.exp(log_retention[b, t, h]) * w - lr[b, t, h] * u
                o[b, t, h] = scale * q[b, t, h] @ w
            final_w[b, h] = w
            if momentum:
                final_s[b, h] = s
    return (o, final_w, final_s) if momentum else (o, final_w)


def _activation(name):
    """(f, f') in float64: exact GELU or SiLU."""
    if name == "silu":
        sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
        return (lambda x: x * sig(x)), (lambda x: sig(x) * (1 + x * (1 - sig(x))))
    erf = np.vectorize(math.erf)
    cdf = lambda x: 0.5 * (1 + erf(x / math.sqrt(2)))  # noqa: E731
    return (lambda x: x * cdf(x)), (lambda x: cdf(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))


def anchored_memory_numpy(q, k, v, lr, log_retention, log_momentum, weights, momentum, chunk, activation,
                          segment_ids=None, max_grad_norm=0.0):
    """A two-layer memory M(z) = act(z W1) W2 token by token in float64 with hand-written backprop:
    u = grad of ||M(k_t; W_a) - v_t||^2 at the chunk anchor W_a, lr scaled by min(1, tau / ||u||)
    when tau = max_grad_norm > 0; S = mu S - lr u, W = l W + S (no
    momentum: W = l W - lr u); y_t = M(q_t; W). A document start (id changes to a non-zero id)
    resets (W, S, W_a) and the chunk grid; id 0 holds the state. Returns (o, W1, W2[, S1, S2])."""
    f, df = _activation(activation)
    q, k, v, lr, log_retention = (np.asarray(x, np.float64) for x in (q, k, v, lr, log_retention))
    batch, seq, heads, _ = q.shape
    seg = np.ones((batch, seq), np.int64) if segment_ids is None else segment_ids
    o = np.zeros(v.shape)
    finals = [np.zeros(np.shape(w)) for w in weights * (2 if log_momentum is not None else 1)]
    for b in range(batch):
        for h in range(heads):
            w0 = [np.asarray(x[b, h], np.float64) for x in weights]
            s0 = [np.zeros_like(x) for x in w0] if momentum is None else [np.asarray(x[b, h], np.float64)
                                                                           for x in momentum]
            w, s, anchor, pos = [x.copy() for x in w0], [x.copy() for x in s0], [x.copy() for x in w0], 0
            for t in range(seq):
                if t > 0 and seg[b, t] != seg[b, t - 1] and seg[b, t] > 0:
                    w, s, anchor, pos = [x.copy() for x in w0], [x.copy() for x in s0], [x.copy() for x in w0], 0
                if seg[b, t] > 0:
                    kt = k[b, t, h]
                    hidden = kt @ anchor[0]
                    e = 2 * (f(hidden) @ anchor[1] - v[b, t, h])
                    u = [np.outer(kt, (anchor[1] @ e) * df(hidden)), np.outer(f(hidden), e)]
                    keep = np.exp(log_retention[b, t, h])
                    rate = lr[b, t, h]
                    if max_grad_norm > 0:
                        rate *= min(1.0, max_grad_norm / np.sqrt(sum(np.sum(ui * ui) for ui in u)))
                    if log_momentum is None:
                        w = [keep * wi - rate * ui for wi, ui in zip(w, u)]
                    else:
                        s = [np.exp(log_momentum[b, t, h]) * si - rate * ui for si, ui in zip(s, u)]
                        w = [keep * wi + si for wi, si in zip(w, s)]
                    pos += 1
                    if pos == chunk:
                        anchor, pos = [x.copy() for x in w], 0
                o[b, t, h] = f(q[b, t, h] @ w[0]) @ w[1]
            for i, x in enumerate(w + (s if log_momentum is not None else [])):
                finals[i][b, h] = x
    return (o, *finals)


def polysketch_attention_numpy(phi_q, phi_k, v, local_q, local_k, degree, block, state, norm, starts=None):
    """The decoding form (PolySketchFormer §2.4) token by token in float64: (S, z) hold the sketched
    keys Phi(k) = phi(k) (x) phi(k) of the completed blocks, the open block's tokens are kept apart
    and weighted exactly (<local_q, local_k>^degree, or <phi_q, phi_k>^2 without local features);
    o_t = (sum_open w v + Phi(q_t)^T S) / (1 + sum_open w + Phi(q_t)^T z). A block folds into (S, z)
    when the next begins; a document start empties (S, z) and the open block. Returns (o, S_T, z_T)
    with the open block folded in."""
    phi_q, phi_k, v, state, norm = (np.asarray(x, np.float64) for x in (phi_q, phi_k, v, state, norm))
    local = local_q is not None
    if local:
        local_q, local_k = np.asarray(local_q, np.float64), np.asarray(local_k, np.float64)
    batch, seq, heads, _ = v.shape
    o = np.zeros(v.shape)
    final_s, final_z = np.zeros(state.shape), np.zeros(norm.shape)
    for b in range(batch):
        for h in range(heads):
            s, z, open_block = state[b, h].copy(), norm[b, h].copy(), []
            for t in range(seq):
                if starts is not None and starts[b, t]:
                    s, z, open_block = np.zeros_like(s), np.zeros_like(z), []
                elif t % block == 0:
                    s, z = _fold(s, z, phi_k[b, open_block, h], v[b, open_block, h])
                    open_block = []
                open_block.append(t)
                if local:
                    w = np.array([(local_q[b, t, h] @ local_k[b, j, h]) ** degree for j in open_block])
                else:
                    w = np.array([(phi_q[b, t, h] @ phi_k[b, j, h]) ** 2 for j in open_block])
                big_q = np.kron(phi_q[b, t, h], phi_q[b, t, h])
                num = w @ v[b, open_block, h] + big_q @ s
                o[b, t, h] = num / (1.0 + w.sum() + big_q @ z)
            final_s[b, h], final_z[b, h] = _fold(s, z, phi_k[b, open_block, h], v[b, open_block, h])
    return o, final_s, final_z


def _fold(s, z, keys, values):
    """(S, z) + the tokens' sketched keys Phi(k) = phi(k) (x) phi(k): `keys: [n, r]`, `values: [n, dv]`."""
    for key, value in zip(keys, values, strict=True):
        feature = np.kron(key, key)
        s, z = s + np.outer(feature, value), z + feature
    return s, z


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _qkv(rng, seq):
    q = rng.standard_normal((BATCH, seq, HEADS, DK))
    k = rng.standard_normal((BATCH, seq, HEADS, DK))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # L2-normalised keys, as the models use
    v = rng.standard_normal((BATCH, seq, HEADS, DV))
    return {"q": q, "k": k, "v": v}


def _gate(rng, seq):
    return rng.standard_normal((BATCH, seq, HEADS))


def _state(rng, std):
    return std * rng.standard_normal((BATCH, HEADS, DK, DV))


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One op variant: `inputs(rng, seq)` -> dict of float32 arrays (every differentiable input,
    initial states included); `run(inputs, backend, chunk_size)` -> (o, *final states);
    `numpy(inputs, chunk_size)` -> the same tuple from the float64 loop; `split(inputs, t0, t1)` the
    inputs of tokens t0..t1 without the initial states; `states(outputs)` the final states as the
    next call's initial-state entries. `anchored`: the chunk size is part of the function (the
    reference runs at the backend's chunk size, documents start on its grid, a continuation starts
    on it); otherwise it is a tiling choice. `state_shapes`: the final states' shapes."""

    name: str
    make: Callable[[np.random.Generator, int], dict[str, np.ndarray]]
    run: Callable[..., tuple]
    numpy: Callable[[dict, int], tuple]
    state_keys: tuple[str, ...]
    anchored: bool = False
    state_shapes: tuple[tuple[int, ...], ...] | None = None

    def inputs(self, rng: np.random.Generator, seq: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(x, np.float32) for name, x in self.make(rng, seq).items()}

    def split(self, inputs: dict, t0: int, t1: int) -> dict:
        return {name: (x if name in self.state_keys else x[:, t0:t1]) for name, x in inputs.items()}

    def states(self, outputs: tuple) -> dict:
        return dict(zip(self.state_keys, outputs[1:]))

    def output_shapes(self, seq: int) -> tuple[tuple[int, ...], ...]:
        states = self.state_shapes or ((BATCH, HEADS, DK, DV),) * len(self.state_keys)
        return ((BATCH, seq, HEADS, DV),) + tuple(states)

    def reference_chunk(self, chunk_size: int) -> int:
        """The chunk size the reference runs at to be the oracle of a backend at `chunk_size`."""
        return chunk_size if self.anchored else 64


# Packed documents for the "/resets" cases: row 0 starts documents at 3, single-token ones at 9 and
# 10, and 16 (on the grid of chunk 4 and 16); row 1 at 5, 17, 22 and 36 (the last token alone).
STARTS = ((3, 9, 10, 16), (5, 17, 22, 36))


def segment_ids(seq):
    """`[BATCH, seq]` int32 document ids with the STARTS above (those below seq)."""
    ids = np.zeros((BATCH, seq), np.int32)
    for b, starts in enumerate(STARTS):
        for t in starts:
            ids[b, t:] += 1
    return ids


def _starts(seq):
    ids = segment_ids(seq)
    return np.concatenate([np.zeros((BATCH, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)


def _gdn_inputs(rng, seq):
    return dict(**_qkv(rng, seq), beta=1 / (1 + np.exp(-_gate(rng, seq))), g=_log_sigmoid(_gate(rng, seq) + 2.5),
                initial_state=_state(rng, 0.5))


def _gdn_run(resets):
    def run(x, backend, chunk_size):
        seg = segment_ids(x["q"].shape[1]) if resets else None
        return kernels.gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], x["g"], initial_state=x["initial_state"],
                                        output_final_state=True, chunk_size=chunk_size, backend=backend,
                                        segment_ids=seg)

    return run


def _gdn_numpy(resets):
    def numpy(x, chunk_size):
        starts = _starts(x["q"].shape[1]) if resets else None
        return gated_delta_rule_numpy(x["q"], x["k"], x["v"], x["beta"], x["g"], x["initial_state"], DK**-0.5,
                                      starts)

    return numpy


def _mdr_inputs(momentum):
    def make(rng, seq):
        x = dict(**_qkv(rng, seq), lr=0.6 / (1 + np.exp(-_gate(rng, seq))),
                 log_retention=_log_sigmoid(_gate(rng, seq) + 3.0), initial_state=_state(rng, 0.5))
        if momentum:
            x.update(log_momentum=_log_sigmoid(_gate(rng, seq) + 1.0), initial_momentum=_state(rng, 0.2))
        return x

    return make


def _mdr_run(resets):
    def run(x, backend, chunk_size):
        o, (w, s) = kernels.momentum_delta_rule(
            x["q"], x["k"], x["v"], x["lr"], x["log_retention"], x.get("log_momentum"),
            initial_state=x["initial_state"], initial_momentum=x.get("initial_momentum"), output_final_state=True,
            chunk_size=chunk_size, backend=backend, segment_ids=segment_ids(x["q"].shape[1]) if resets else None)
        return (o, w) if s is None else (o, w, s)

    return run


def _mdr_numpy(resets):
    def numpy(x, chunk_size):
        starts = _starts(x["q"].shape[1]) if resets else None
        return momentum_delta_rule_numpy(x["q"], x["k"], x["v"], x["lr"], x["log_retention"],
                                         x.get("log_momentum"), x["initial_state"], x.get("initial_momentum"),
                                         DK**-0.5, starts)

    return numpy


# Packed documents for the anchored "/resets" case: on the grid of chunk 4 and 16, with padding (id 0)
# before some starts; row 0: documents at 0, 16, 32 (padding 13-15); row 1: at 0, 16 (padding 21-31), 32.
def anchored_segment_ids(seq):
    ids = np.ones((BATCH, seq), np.int32)
    ids[0, 13:16], ids[0, 16:], ids[0, 32:] = 0, 2, 3
    ids[1, 16:], ids[1, 21:32], ids[1, 32:] = 2, 0, 3
    return ids


def _am_inputs(momentum):
    def make(rng, seq):
        x = dict(**_qkv(rng, seq), lr=0.15 / (1 + np.exp(-_gate(rng, seq))),
                 log_retention=_log_sigmoid(_gate(rng, seq) + 3.0),
                 w0=0.5 * rng.standard_normal((BATCH, HEADS, DK, HIDDEN)),
                 w1=0.3 * rng.standard_normal((BATCH, HEADS, HIDDEN, DV)))
        if momentum:
            x.update(log_momentum=_log_sigmoid(_gate(rng, seq) + 1.0),
                     s0=0.05 * rng.standard_normal((BATCH, HEADS, DK, HIDDEN)),
                     s1=0.05 * rng.standard_normal((BATCH, HEADS, HIDDEN, DV)))
        return x

    return make


# The momentum variant clips its inner steps (Titans' default memory has tau = 4; 1.5 engages here).
def _am_clip(momentum):
    return 1.5 if momentum else 0.0


def _am_run(resets, activation):
    def run(x, backend, chunk_size):
        momentum = x.get("s0") is not None
        o, (w, s) = kernels.anchored_memory(
            x["q"], x["k"], x["v"], x["lr"], x["log_retention"], x.get("log_momentum"),
            initial_weights=(x["w0"], x["w1"]), initial_momentum=(x["s0"], x["s1"]) if momentum else None,
            chunk_size=chunk_size, activation=activation, max_grad_norm=_am_clip(momentum), output_final_state=True,
            backend=backend, segment_ids=anchored_segment_ids(x["q"].shape[1]) if resets else None)
        return (o, *w, *s) if momentum else (o, *w)

    return run


def _am_numpy(resets, activation):
    def numpy(x, chunk_size):
        momentum = x.get("s0") is not None
        return anchored_memory_numpy(x["q"], x["k"], x["v"], x["lr"], x["log_retention"], x.get("log_momentum"),
                                     (x["w0"], x["w1"]), (x["s0"], x["s1"]) if momentum else None, chunk_size,
                                     activation, anchored_segment_ids(x["q"].shape[1]) if resets else None,
                                     _am_clip(momentum))

    return numpy


_AM_WEIGHTS = ((BATCH, HEADS, DK, HIDDEN), (BATCH, HEADS, HIDDEN, DV))


SKETCH, LOCAL = 3, 5  # PolySketch: sketch size r (r^2 = 9 features), exact local feature size


def _psa_inputs(rng, seq):
    """Sketched features with keys near their queries (pairs worth finding), local features, and a
    state of earlier tokens (z = the sum of non-negative features: positive)."""
    phi_q = 0.6 * rng.standard_normal((BATCH, seq, HEADS, SKETCH))
    local_q = 0.5 * rng.standard_normal((BATCH, seq, HEADS, LOCAL))
    return dict(q=phi_q, k=phi_q + 0.4 * rng.standard_normal(phi_q.shape), v=rng.standard_normal((BATCH, seq, HEADS, DV)),
                local_q=local_q, local_k=local_q + 0.4 * rng.standard_normal(local_q.shape),
                initial_state=0.5 * rng.standard_normal((BATCH, HEADS, SKETCH**2, DV)),
                initial_norm=np.abs(rng.standard_normal((BATCH, HEADS, SKETCH**2))))


def _psa_run(resets, local):
    def run(x, backend, chunk_size):
        o, (s, z) = kernels.polysketch_attention(
            x["q"], x["k"], x["v"], local_q=x["local_q"] if local else None, local_k=x["local_k"] if local else None,
            degree=4, block_size=chunk_size,
            initial_state=None if x["initial_state"] is None else (x["initial_state"], x["initial_norm"]),
            output_final_state=True, backend=backend, segment_ids=segment_ids(x["q"].shape[1]) if resets else None)
        return o, s, z

    return run


def _psa_numpy(resets, local):
    def numpy(x, chunk_size):
        starts = _starts(x["q"].shape[1]) if resets else None
        return polysketch_attention_numpy(x["q"], x["k"], x["v"], x["local_q"] if local else None,
                                          x["local_k"] if local else None, 4, chunk_size, x["initial_state"],
                                          x["initial_norm"], starts)

    return numpy


def _psa_sketched(rng, seq):
    x = _psa_inputs(rng, seq)
    del x["local_q"], x["local_k"]
    return x


_PSA_STATES = ((BATCH, HEADS, SKETCH**2, DV), (BATCH, HEADS, SKETCH**2))


def _cases(resets):
    tag = "/resets" if resets else ""
    cases = [
        OpCase("gated_delta_rule" + tag, _gdn_inputs, _gdn_run(resets), _gdn_numpy(resets), ("initial_state",)),
        OpCase("momentum_delta_rule" + tag, _mdr_inputs(True), _mdr_run(resets), _mdr_numpy(resets),
               ("initial_state", "initial_momentum")),
        OpCase("momentum_delta_rule/no_momentum" + tag, _mdr_inputs(False), _mdr_run(resets), _mdr_numpy(resets),
               ("initial_state",)),
        OpCase("anchored_memory" + tag, _am_inputs(True), _am_run(resets, "silu"), _am_numpy(resets, "silu"),
               ("w0", "w1", "s0", "s1"), anchored=True, state_shapes=_AM_WEIGHTS * 2),
        OpCase("anchored_memory/no_momentum" + tag, _am_inputs(False), _am_run(resets, "gelu"),
               _am_numpy(resets, "gelu"), ("w0", "w1"), anchored=True, state_shapes=_AM_WEIGHTS),
        # exact local attention makes the block part of the function (anchored); sketched only, a tiling choice
        OpCase("polysketch_attention" + tag, _psa_inputs, _psa_run(resets, True), _psa_numpy(resets, True),
               ("initial_state", "initial_norm"), anchored=True, state_shapes=_PSA_STATES),
        OpCase("polysketch_attention/sketched" + tag, _psa_sketched, _psa_run(resets, False),
               _psa_numpy(resets, False), ("initial_state", "initial_norm"), state_shapes=_PSA_STATES),
    ]
    return {case.name: case for case in cases}


# "/resets": the same ops on packed documents (segment_ids), restarting from the initial states.
CASES = {**_cases(False), **_cases(True)}


def assert_close(actual, expected, *, rtol=1e-5, atol=1e-5, what=""):
    """Elementwise `|a - e| <= atol * max(1, max|e|) + rtol * |e|`: the absolute part scales with
    the array's magnitude so large gradients are held to the same relative standard."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def random_like(rng: np.random.Generator, shapes) -> tuple[np.ndarray, ...]:
    return tuple(rng.standard_normal(shape).astype(np.float32) for shape in shapes)

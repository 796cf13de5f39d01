"""Hope: the self-modifying Titans chunk update against a float64 NumPy token loop written from
the paper's equations (Eq. 86-93 with the chunk anchor of Eq. 90-91), the read at the chunk start,
the continuum memory (one level = the MLP; level periods in the optimiser), the tiny config's
training. The model contract (decode == forward, pieces, packing, causality) runs in
test_model_contract.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from zoo.config import load_config
from zoo.layers import SwiGLU
from zoo.layers.cms import ContinuumMemory
from zoo.memory.self_modifying import MEMORIES, HopeFormat, SelfModifyingTitans, chunk_update
from zoo.training.optimizer import make_optimizer


def _gelu(z):  # jax.nn.gelu's tanh form and its derivative
    s = math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)
    th = np.tanh(s)
    return 0.5 * z * (1 + th), 0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * z ** 2)


def _l2(x):
    return x / np.sqrt(np.sum(x * x) + 1e-6)


def _mlp(w, z):
    return z + _gelu(z @ w[0])[0] @ w[1]


def oracle(init, u, q, readouts, chunk, tau):
    """Token by token: every quantity of token t from the weights at its chunk start (the anchor),
    y_t = M_mem(anchor)(q_t), then W <- (alpha I - eta a^ a^T) W - eta s grad at the anchor, the
    gradient (all layers of the memory) scaled to norm <= tau."""
    (r_eta, b_eta, lr_max), (r_alpha, b_alpha) = readouts
    running = {n: [np.array(x, np.float64) for x in w] for n, w in init.items()}
    anchor, ys = None, []
    for t in range(u.shape[0]):
        if t % chunk == 0:
            anchor = {n: [x.copy() for x in w] for n, w in running.items()}
        k, v = _l2(_mlp(anchor["k"], u[t])), _mlp(anchor["v"], u[t])
        eta = lr_max / (1 + np.exp(-(_mlp(anchor["eta"], u[t]) @ r_eta + b_eta)))
        alpha = 1 / (1 + np.exp(-(_mlp(anchor["alpha"], u[t]) @ r_alpha + b_alpha)))
        ys.append(_mlp(anchor["mem"], _l2(q[t])))
        for name in MEMORIES:
            w2, w1 = anchor[name]
            target = _mlp(anchor[name], v)  # the self-generated value v^ = M(v)
            act, slope = _gelu(k @ w2)
            err = 2 * (k + act @ w1 - target)
            grads = [np.outer(k, (w1 @ err) * slope), np.outer(act, err)]
            scale = min(1.0, tau / np.sqrt(sum(np.sum(g * g) for g in grads)))
            for i, (a, g) in enumerate(zip((k, act), grads, strict=True)):
                a = _l2(a)
                running[name][i] = (alpha * np.eye(a.size) - eta * np.outer(a, a)) @ running[name][i] - eta * scale * g
    return np.stack(ys), running


def test_chunk_update_equals_the_numpy_token_loop():
    d, e, t, chunk = 4, 6, 10, 4  # ragged: 10 tokens in chunks of 4
    keys = iter(jax.random.split(jax.random.key(0), 16))
    init = {n: (jax.random.normal(next(keys), (d, e)) / 2, 0.3 * jax.random.normal(next(keys), (e, d)))
            for n in MEMORIES}
    u, q = jax.random.normal(next(keys), (t, d)), jax.random.normal(next(keys), (t, d))
    readouts = {"eta": (jax.random.normal(next(keys), (d,)), jnp.asarray(-1.0), 0.5),
                "alpha": (jax.random.normal(next(keys), (d,)), jnp.asarray(3.0))}
    want_y, want_w = oracle({n: [np.asarray(x) for x in w] for n, w in init.items()}, np.asarray(u, np.float64),
                            np.asarray(q, np.float64), (readouts["eta"], readouts["alpha"]), chunk, 1.0)
    n = math.ceil(t / chunk)
    pad = lambda x: jnp.pad(x, ((0, n * chunk - t), (0, 0))).reshape(n, chunk, d)  # noqa: E731
    valid = jnp.arange(n * chunk).reshape(n, chunk) < t
    running, ys = init, []
    for i in range(n):
        anchor = running
        running, y = chunk_update(anchor, running, pad(u)[i], pad(q)[i], valid[i], readouts, max_grad_norm=1.0)
        ys.append(y)
    np.testing.assert_allclose(np.concatenate(ys)[:t], want_y, atol=1e-5, rtol=1e-5)
    for name in MEMORIES:
        for got, want in zip(running[name], want_w[name], strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_reads_are_at_the_chunk_start():
    """Without the conv (width 1), a token changes no output of another token of its chunk, and
    does change the next chunk's."""
    m = SelfModifyingTitans(16, 2, 8, HopeFormat(chunk=4, conv_width=1), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 12, 16))
    y, changed = m(x)[0], m(x.at[:, 5].add(1.0))[0]
    diff = np.abs(np.asarray(changed - y)).max(axis=(0, 2))
    assert diff[[4, 6, 7]].max() == 0 and diff[5] > 0 and diff[8:].min() > 0


def test_gradients_reach_every_memory():
    m = SelfModifyingTitans(16, 2, 8, HopeFormat(chunk=4), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 12, 16))
    graphdef, state = nnx.split(m)
    grads = nnx.to_pure_dict(jax.jit(jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x)[0] ** 2)))(state))
    for name in MEMORIES:  # each memory's initial state learns (through the reads or the targets)
        for layer in grads["init_state"][name].values():
            assert float(jnp.abs(layer).max()) > 0, name
    for name in ("u", "q", "eta_readout", "eta_bias", "alpha_readout", "alpha_bias"):
        assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[name])), name


def test_one_level_continuum_memory_is_the_mlp():
    cms = ContinuumMemory(16, 32, (1,), std=0.1, out_std=0.1, rngs=nnx.Rngs(0))
    mlp = SwiGLU(16, 32, std=0.1, out_std=0.1, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    np.testing.assert_allclose(cms(x), mlp(x), atol=1e-6)


def test_slow_levels_step_every_period_on_summed_gradients():
    """A level with period p keeps its parameters for p - 1 steps, then takes one AdamW step on
    the gradients summed over the p steps, at the learning rate of the current step."""
    cfg = load_config(None, overrides=["model.name=hope", "model.hope.cms_periods=[1,3]", "model.d_model=16",
                                       "model.num_heads=2", "model.num_layers=1", "optimizer.grad_clip=0",
                                       "schedule.warmup_steps=4", "data.align_documents=16"])
    tx = make_optimizer(cfg)
    params = {"blocks": {"0": {"mlp": {"levels": {"0": {"w": jnp.ones((2, 2))}, "1": {"w": jnp.ones((2, 2))}}}}}}
    state = tx.init(params)
    grads = [jax.tree.map(lambda p, i=i: (i + 1.0) * jnp.arange(4.0).reshape(2, 2) + 1, params) for i in range(3)]
    for i, g in enumerate(grads):
        updates, state = tx.update(g, state, params)
        slow = updates["blocks"]["0"]["mlp"]["levels"]["1"]["w"]
        fast = updates["blocks"]["0"]["mlp"]["levels"]["0"]["w"]
        assert (float(jnp.abs(fast).max()) > 0) == (i > 0)  # the warmup's first learning rate is 0
        if i < 2:
            assert float(jnp.abs(slow).max()) == 0
    summed = sum(g["blocks"]["0"]["mlp"]["levels"]["1"]["w"] for g in grads)
    o = cfg.optimizer
    lr = float(optax.linear_schedule(0.0, o.learning_rate, 4)(2))  # warmup, at the third step (counted from 0)
    adam = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    want, _ = adam.update(summed, adam.init(jnp.ones((2, 2))), jnp.ones((2, 2)))
    np.testing.assert_allclose(slow, want, rtol=1e-5)


@pytest.mark.slow  # 19 s, over the suite's 15-minute budget; `python -m pytest -m slow tests` runs it
def test_tiny_config_trains(tmp_path):
    from zoo.training import train

    cfg = load_config("configs/hope/tiny.yaml", overrides=["train.steps=20", "data.max_documents=60",
                                                           "eval.max_batches=1"])
    result = train(cfg, tmp_path, devices=jax.devices()[:1])
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.5


def test_bad_formats_name_the_fix():
    from zoo.config import ConfigError

    base = ["model.name=hope", "model.hope.chunk=8", "data.align_documents=8"]
    with pytest.raises(ConfigError, match="data.align_documents=8"):
        load_config(None, overrides=base[:-1] + ["data.align_documents=4"])
    with pytest.raises(ConfigError, match="model.hope.cms_periods"):
        load_config(None, overrides=base + ["model.hope.cms_periods=[1,0]"])
    with pytest.raises(ConfigError, match="model.hope.lr_init"):
        load_config(None, overrides=base + ["model.hope.lr_init=2.0"])
    with pytest.raises(ValueError, match="hope.chunk"):
        SelfModifyingTitans(16, 2, 8, HopeFormat(chunk=0), rngs=nnx.Rngs(0))
    assert load_config(None, overrides=base).model.hope.chunk == 8

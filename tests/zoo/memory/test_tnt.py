"""TNT (zoo.memory.tnt): the reduction to the wrapped memory, shard independence, the global read
at the chunk start, the Q-K projection against its definition, chunk-parallel == token by token
for every Q-K range and wrapped memory family, Stage 1 -> Stage 2 end to end, config errors.
The model contract (decode == forward, pieces, packing, causality) runs in test_model_contract.py."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ConfigError, MemoryConfig, load_config
from zoo.memory.layer import MemoryMixer
from zoo.memory.qk_projection import project_queries
from zoo.memory.tnt import TNTFormat, TNTMixer

D, H, DH = 16, 2, 8
MEMORY = MemoryConfig(chunk_size=8, expansion=2)


def mixer(tnt: TNTFormat, memory: MemoryConfig = MEMORY, seed: int = 0) -> TNTMixer:
    return TNTMixer(D, H, DH, memory, tnt, rngs=nnx.Rngs(seed))


def inputs(t: int, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (2, t, D))


fresh_call = nnx.jit(lambda m, x: m(x))
continued_call = nnx.jit(lambda m, x, state: m(x, state=state))


def token_by_token(m, x, cuts=None):
    """The mixer fed in pieces ending at `cuts` (default: one token at a time) from a fresh state."""
    cuts = list(range(1, x.shape[1])) if cuts is None else cuts
    state, out = m.init_state_for(x.shape[0]), []
    for lo, hi in zip([0] + cuts, cuts + [x.shape[1]], strict=True):
        y, state = continued_call(m, x[:, lo:hi], state)
        out.append(y)
    return jnp.concatenate(out, axis=1), state


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def test_reduction_to_the_wrapped_memory():
    """Global off, P = I, no resets, W_init = W_0: TNT is the wrapped memory at C = C_L (spec §4.8
    item 6), the same parameters giving the same outputs to float precision."""
    tnt = mixer(TNTFormat(local_chunks=(4,), shard=0, global_memory=False, qk_range="off"))
    plain = MemoryMixer(D, H, DH, dataclasses.replace(MEMORY, chunk_size=4), rngs=nnx.Rngs(3))
    local = tnt.local_memories[0]
    for name in ("q", "k", "v", "conv", "out_gate", "o"):
        nnx.update(getattr(plain, name), nnx.state(getattr(tnt, name)))
    plain.out_norm.value = tnt.out_norm.value
    nnx.update(plain.gate_heads, nnx.state(local.gate_heads))
    nnx.update(plain.init_state, nnx.state(local.init_state))
    x = inputs(21)
    close(fresh_call(tnt, x)[0], fresh_call(plain, x)[0], 1e-6)


def test_locals_combine_by_sum_or_mean():
    """combine=mean is combine=sum with the locals' reads divided by their number (two locals,
    global branch off): compared on the combined reads the output path receives."""
    tnt = TNTFormat(local_chunks=(2, 4), shard=8, global_memory=False)
    seen = {}
    for name in ("sum", "mean"):
        m = mixer(dataclasses.replace(tnt, combine=name))
        m.output = lambda x, y, name=name: seen.setdefault(name, y)  # the combined reads [B, H, T, dv]
        m(inputs(12))
    assert float(jnp.abs(seen["sum"]).max()) > 0
    close(seen["mean"], 0.5 * seen["sum"], 1e-6)


def test_shards_are_independent():
    """The locals restart every shard and P with them: perturbing a token in shard s changes no
    output of another shard (global branch off), and does change later outputs in s."""
    m = mixer(TNTFormat(local_chunks=(2, 4), shard=8, global_memory=False))
    x = inputs(24)
    y = fresh_call(m, x)[0]
    changed = fresh_call(m, x.at[:, 10].add(1.0))[0]
    diff = np.abs(np.asarray(changed - y)).max(axis=(0, 2))
    assert diff[:10].max() == 0 and diff[16:].max() == 0 and diff[10:16].min() > 0


def test_global_read_is_at_the_chunk_start():
    """f(V_{a_G(t)}, q_t): a token's key and value move no global read of its chunk (C_G = 8), only
    later chunks'."""
    m = mixer(TNTFormat(local_chunks=(2,), shard=8))
    x = inputs(24)

    q, k, v, _ = m.queries_keys_values(x)

    def global_reads(k, v):
        fresh = m.init_state_for(2).global_memory
        return m._global(None, fresh, q, k, v, m.gates(x), None)[1]  # [B, H, T, dv]

    y, changed = global_reads(k, v), global_reads(k.at[:, :, 9].multiply(-1.0), v.at[:, :, 9].add(1.0))
    diff = np.abs(np.asarray(changed - y)).max(axis=(0, 1, 3))
    assert diff[:16].max() == 0 and diff[16:].min() > 0


def test_qk_projection_matches_its_definition():
    """P_t q_t = sum over the keys since the last reset (token t included) of (k . q_t) k, from a
    carried P, in any chunking; with the count scale divided by the number of those keys."""
    b, h, t, d = 2, 2, 13, 4
    keys = jax.random.split(jax.random.key(0), 5)
    q, k = jax.random.normal(keys[0], (b, h, t, d)), jax.random.normal(keys[1], (b, h, t, d))
    resets = jax.random.bernoulli(keys[2], 0.2, (b, t))
    valid = jax.random.bernoulli(keys[3], 0.8, (b, t))
    p0 = jax.random.normal(keys[4], (b, h, d, d))
    n0 = jnp.full((b, h), 3.0)
    qn, kn, rn, vn, pn = (np.asarray(a, np.float64) for a in (q, k, resets, valid, p0))
    for scale in ("none", "count"):
        want = np.zeros((b, h, t, d))
        for bi in range(b):
            p, n = pn[bi].copy(), np.full(h, 3.0)
            for ti in range(t):
                if rn[bi, ti]:
                    p, n = np.zeros_like(p), np.zeros(h)
                if vn[bi, ti]:
                    p = p + np.einsum("hd,he->hde", kn[bi, :, ti], kn[bi, :, ti])
                    n = n + 1
                proj = np.einsum("hde,he->hd", p, qn[bi, :, ti])  # P symmetric from keys; p0 is not: P^T q
                want[bi, :, ti] = proj / np.maximum(n, 1)[:, None] if scale == "count" else proj
        for chunk in (1, 4, 64):
            got, p_end, n_end = project_queries(q, k, resets, valid, jnp.swapaxes(p0, -1, -2), n0, scale=scale,
                                                chunk=chunk)
            close(got, want, 1e-4)
        assert p_end.shape == (b, h, d, d) and n_end.shape == (b, h)


def test_chunk_parallel_equals_token_by_token():
    """A fresh call (shards as a batch, the global memory on its C_G grid) == one token at a time
    (engine.decode_step, the anchored reference) == pieces that cross shard and chunk boundaries,
    with two locals, a ragged length and the state after the last token equal too. P restarts on
    the first local's chunk grid, scaled by its count (the default, per shard, runs in the model
    contract)."""
    m = mixer(TNTFormat(local_chunks=(2, 4), shard=8, qk_range="chunk", qk_scale="count"))
    x = inputs(21)
    y, state = fresh_call(m, x)
    y_tokens, state_tokens = token_by_token(m, x)
    close(y_tokens, y)
    y_pieces, _ = token_by_token(m, x, [3, 11, 12, 19])
    close(y_pieces, y)
    for a, b in zip(jax.tree.leaves(state_tokens), jax.tree.leaves(state), strict=True):
        close(a, b, 1e-4)


def test_wraps_other_memory_families():
    """ANY anchored memory spec: ATLAS's (Muon's per-position write, an Omega window, polynomial
    features) through the same global and local branches."""
    memory = zoo.registry.memory_config("atlas", chunk_size=8, expansion=2)
    m = mixer(TNTFormat(local_chunks=(4,), shard=8), memory)
    x = inputs(13)
    y = fresh_call(m, x)[0]
    assert np.isfinite(np.asarray(y)).all()
    close(token_by_token(m, x, [6])[0], y, 1e-4)


def test_packed_documents_restart_every_branch():
    """Documents on the grid (here 8) behave as separate sequences: the global memory, the locals
    and P (summed since the document start) all restart."""
    m = mixer(TNTFormat(local_chunks=(2,), shard=8, qk_range="document"))
    x = inputs(24)
    seg = jnp.array([[1] * 8 + [2] * 16, [1] * 16 + [2] * 8])
    packed = nnx.jit(lambda m, x, s: m(x, segment_ids=s))(m, x, seg)[0]
    alone = fresh_call(m, jnp.stack([jnp.roll(x[0], -8, axis=0), jnp.roll(x[1], -16, axis=0)]))[0]
    close(packed[0, 8:], alone[0, :16])
    close(packed[1, 16:], alone[1, :8])


def test_bad_formats_name_the_fix():
    with pytest.raises(ValueError, match="multiple of every local chunk"):
        mixer(TNTFormat(local_chunks=(3,), shard=8))
    with pytest.raises(ValueError, match="one chunk size"):
        mixer(TNTFormat(local_chunks=()))
    with pytest.raises(ValueError, match="semantics=anchored"):
        mixer(TNTFormat(), dataclasses.replace(MEMORY, semantics="exact"))
    base = ["model.name=tnt", "model.memory.chunk_size=16", "model.tnt.local_chunks=[4]", "model.tnt.shard=32"]
    with pytest.raises(ConfigError, match="data.align_documents=32"):
        load_config(None, overrides=base + ["data.align_documents=16"])
    with pytest.raises(ConfigError, match="model.tnt.qk_range"):
        load_config(None, overrides=base + ["model.tnt.qk_range=window", "data.align_documents=32"])
    with pytest.raises(ConfigError, match="model.tnt.shard"):
        load_config(None, overrides=base[:-1] + ["model.tnt.shard=6", "data.align_documents=48"])
    assert load_config(None, overrides=base + ["data.align_documents=32"]).model.tnt.local_chunks == (4,)


@pytest.mark.slow  # 37 s, over the suite's 15-minute budget; `python -m pytest -m slow tests` runs it
def test_stage_one_then_stage_two(tmp_path):
    """configs/tnt/tiny.yaml, then tiny_stage2.yaml from its checkpoint: Stage 2 changes only the
    local memories' parameters (the rest bit for bit), its loss falls, and its model decodes at the
    Stage-2 chunk size (C_L = 1) exactly as its forward."""
    from zoo.training import restore_run, train
    from zoo.training.optimizer import parameter_path

    cpu = jax.devices()[:1]
    short = ["data.max_documents=60", "eval.max_batches=1", "model.num_layers=1"]  # one block: half the compile
    train(load_config("configs/tnt/tiny.yaml", overrides=short + ["train.steps=8"]), tmp_path / "one", devices=cpu)
    stage2 = load_config("configs/tnt/tiny_stage2.yaml",
                         overrides=short + ["train.steps=12", f"train.init_from={tmp_path / 'one'}",
                                            "train.eval_every=1"])
    assert stage2.model.tnt.local_chunks == (1,) and stage2.train.trainable == "local_memories"
    train(stage2, tmp_path / "two", devices=cpu)
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    heldout = [r["heldout_loss"] for r in records if "heldout_loss" in r]  # the same batches after every step
    assert len(heldout) == 12 and heldout[-1] < heldout[0] and heldout[-1] < heldout[len(heldout) // 2]
    before = restore_run(tmp_path / "one", devices=cpu).state.params
    after = restore_run(tmp_path / "two", devices=cpu)
    locals_changed = []
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after.state.params),
                            strict=True):
        if "local_memories" in parameter_path(path):
            locals_changed.append(float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 0)
        else:
            np.testing.assert_array_equal(a, b, err_msg=parameter_path(path))
    assert locals_changed and all(locals_changed)
    model = after.model
    toks = jax.random.randint(jax.random.key(0), (1, 36), 0, 259)  # crosses a shard (32) and a global chunk
    cache, out = model.init_cache(1, 36), []
    step = nnx.jit(lambda m, t, c: m.extend(t, c))
    for i in range(36):
        logits, cache = step(model, toks[:, i:i + 1], cache)
        out.append(logits)
    close(jnp.concatenate(out, axis=1), nnx.jit(lambda m, t: m(t))(model, toks), 1e-4)

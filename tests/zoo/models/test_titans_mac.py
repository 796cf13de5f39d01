"""Titans MAC (memory as context) beyond the shared model contract (test_model_contract.py): the
block against a segment-by-segment reference, a cache that does not grow, segment-local attention
(segments meet only through the memory), the tiny config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ModelConfig, load_config

C = 8  # segment = memory chunk
VOCAB = 61


def build(num_layers=1, attn_conv_width=0, mac_write="input", **memory):
    cfg = ModelConfig(name="titans_mac", vocab_size=VOCAB, d_model=32, num_layers=num_layers, num_heads=2,
                      persistent_tokens=2, attn_conv_width=attn_conv_width, mac_write=mac_write,
                      memory=zoo.registry.memory_config("titans_mac", chunk_size=C, expansion=2, **memory))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def tokens(seq, batch=2, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, seq), 0, VOCAB, jnp.int32)


def perturb(toks, t):
    return toks.at[:, t].set((toks[:, t] + 7) % VOCAB)


# Shapes here are tiny, so XLA's compile time dominates on CPU: compile with backend optimisation
# off (about 2.5x faster to compile). Models are jitted as (static graphdef, state), like nnx.jit.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn):
    compiled = jax.jit(lambda graphdef, state, *args: fn(nnx.merge(graphdef, state), *args), static_argnums=0,
                       compiler_options=FAST_COMPILE)
    return lambda model, *args: compiled(*nnx.split(model), *args)


forward = jit(lambda m, t: m(t))
forward_seg = jit(lambda m, t, s: m(t, segment_ids=s))


@pytest.fixture(scope="module")
def model():
    return build(num_layers=2)


@pytest.fixture(scope="module")
def toks():
    return tokens(21)  # two full segments and a partial one


@pytest.fixture(scope="module")
def reference(model, toks):
    return forward(model, toks)


def test_registered():
    info = zoo.registry.models()["titans_mac"]
    assert info.family == "Titans" and info.uses_memory and info.tiny_config == "configs/titans/mac_tiny.yaml"


def reference_mix(block, x):
    """One MAC block's token mixing written out segment by segment with public pieces: retrieval
    at the segment-start memory (Eq. 21), attention over [P || retrieved || segment] with
    lower-triangular blocks (Eq. 22-23), and the write + per-position read as a plain
    MemoryMixer call on the segment's tokens (`mac_write: input`) or on y_n (`attention`, Eq. 24),
    carrying its state from segment to segment; its output gates y_n (Eq. 25)."""
    from zoo.layers import apply_rotary
    from zoo.memory import engine

    mixer, attn = block.mixer, block.attn
    b, t, _ = x.shape
    h = block.in_norm(x)
    q_ret = mixer.queries_keys_values(h)[0]
    state = mixer.init_state_for(b)
    read = jax.vmap(jax.vmap(jax.vmap(lambda w, q: engine.read(mixer.spec, w, q), (None, 0))))
    outs = []
    for lo in range(0, t, C):
        hs, n = h[:, lo:lo + C], min(C, t - lo)
        pos = jnp.arange(n)
        # state.memory.weights: the state after the previous segment (= the anchor)
        r = block.retrieved_norm(mixer.output(hs, read(state.memory.weights, q_ret[:, :, lo:lo + n])))
        keys = jnp.concatenate([apply_rotary(attn.k(r), pos), apply_rotary(attn.k(hs), pos)], 1)
        values = jnp.concatenate([attn.v(r), attn.v(hs)], 1)
        tril = jnp.tril(jnp.ones((n, n), bool))
        pk, pv = attn.persistent_k.value, attn.persistent_v.value  # [P || retrieved || segment]
        keys = jnp.concatenate([jnp.broadcast_to(pk, (b,) + pk.shape), keys], 1)
        values = jnp.concatenate([jnp.broadcast_to(pv, (b,) + pv.shape), values], 1)
        mask = jnp.concatenate([jnp.ones((n, pk.shape[0]), bool), tril, tril], 1)[None, None]
        y = attn.o(jax.nn.dot_product_attention(apply_rotary(attn.q(hs), pos), keys, values, mask=mask))
        y_n = block.attn_out_norm(y)
        m, state = mixer(hs if block.write_input else y_n, state=state)
        outs.append(y_n * jax.nn.sigmoid(block.mem_out_norm(m)))
    return x + jnp.concatenate(outs, 1)


@pytest.mark.parametrize("mac_write", ["input", "attention"])
def test_block_matches_segment_by_segment_reference(model, mac_write):
    block = model.blocks[0] if mac_write == "input" else build(mac_write=mac_write).blocks[0]
    x = jax.random.normal(jax.random.key(2), (2, 21, 32))
    mix = jit(lambda blk, x: blk.mix(x, None, None)[0])
    np.testing.assert_allclose(mix(block, x), jit(reference_mix)(block, x), atol=1e-5, rtol=1e-5)


def test_cache_does_not_grow_with_context(model):
    cache = model.init_cache(2, 10_000)
    sizes = {x.shape[1] for x in (cache[0].k_mem, cache[0].v_seg, cache[0].written)}
    assert sizes == {C}


@pytest.mark.parametrize("lr_max", [0.0, 0.1])
def test_segments_meet_only_through_the_memory(lr_max):
    # No retention, no conv: with lr_max = 0 the memory stays W_0, so nothing of segment 0 may
    # reach segment 1 (attention is segment-local); with lr_max > 0 the memory carries it.
    model = build(retention="none", conv_width=1, lr_max=lr_max)
    toks = tokens(16, batch=1)
    a, b = forward(model, toks), forward(model, perturb(toks, 1))
    assert float(jnp.abs(a[:, 1:C] - b[:, 1:C]).max()) > 0
    later = float(jnp.abs(a[:, C:] - b[:, C:]).max())
    if lr_max == 0.0:
        assert later == 0.0
    else:
        assert later > 1e-6


def test_tiny_config_builds():
    cfg = load_config("configs/titans/mac_tiny.yaml")
    assert cfg.model.name == "titans_mac" and cfg.data.align_documents == cfg.model.memory.chunk_size == 8
    model = zoo.build_model(cfg.model, rngs=nnx.Rngs(0))
    assert len(model.blocks) == 2


def test_attention_writes_decode_after_a_mid_segment_prefill_like_the_forward():
    """`model.mac_write: attention` (Eq. 24 as printed; the model contract runs the default): a
    prefill ending mid-segment, then one token at a time, equals one forward call."""
    model, toks = build(mac_write="attention", attn_conv_width=3), tokens(13)
    step = nnx.jit(lambda m, t, c: m.extend(t, c))
    logits, cache = step(model, toks[:, :C + 3], model.init_cache(2, 13))
    pieces = [logits]
    for t in range(C + 3, 13):
        logits, cache = step(model, toks[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), forward(model, toks), atol=1e-5, rtol=1e-5)

"""The model contract, once, for every registered model (`zoo.registry.models()`): a new model
adds a registration, not a test file.

Each model is built and compiled once per module (the `case` fixture); every test reuses its
compiled forward and its reference logits, and the packed-documents and gradient tests share one
compiled forward-and-backward of the training path. The contract: forward shape and finiteness; decoding
after a prefill that ends mid-chunk == the forward; pieces with carried caches (off the chunk
grid) == one call; zoo.streaming's scanned segments == one call; causality; packed documents ==
separate sequences; finite gradients that reach the memory's outer parameters through its inner
updates; greedy generation == the forward's argmax.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.config import ModelConfig
from zoo.memory.self_modifying import HopeFormat
from zoo.memory.tnt import TNTFormat
from zoo.streaming import stream_logits

NAMES = sorted(zoo.registry.models())
VOCAB = 53
CHUNK = 4  # memory chunk (MAC: segment) size
SEQ = 15  # three full chunks and a partial one


def model_config(name: str) -> ModelConfig:
    info = zoo.registry.models()[name]
    return ModelConfig(name=name, vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, sliding_window=6,
                       attn_conv_width=3, persistent_tokens=2 if info.uses_memory else 0,
                       tnt=TNTFormat(local_chunks=(2,), shard=CHUNK),  # TNT: locals of 2, a shard per chunk
                       hope=HopeFormat(chunk=CHUNK, cms_periods=(1, 2)),
                       memory=zoo.registry.memory_config(name, chunk_size=CHUNK, expansion=2))


forward = nnx.jit(lambda m, t: m(t))
extend = nnx.jit(lambda m, t, c: m.extend(t, c))


# row 0: documents of 4 and 11 tokens; row 1: 12 and 3 (both start on the chunk grid)
PACKED = jnp.array([[1] * 4 + [2] * 11, [1] * 12 + [2] * 3])


@dataclasses.dataclass
class Case:
    name: str
    model: nnx.Module
    toks: jax.Array  # [2, SEQ]
    reference: jax.Array  # forward(model, toks): [2, SEQ, VOCAB]
    packed: tuple | None = None  # (logits, parameter gradients) of the training path, once computed

    def training_path(self):
        """The logits of `toks` as packed documents (`PACKED`) and the gradient of their mean square
        with respect to every parameter, from one compiled program (shared by two tests)."""
        if self.packed is None:
            graphdef, state = nnx.split(self.model)

            @jax.jit
            def run(state):
                logits, vjp = jax.vjp(lambda s: nnx.merge(graphdef, s)(self.toks, segment_ids=PACKED), state)
                return logits, vjp(2.0 * logits / logits.size)[0]

            self.packed = run(state)
        return self.packed


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    model = zoo.build_model(model_config(request.param), rngs=nnx.Rngs(0))
    for i, block in enumerate(model.blocks):  # random attention convs, so their carried tails matter
        conv = getattr(getattr(block, "attn", None), "conv", None)
        if conv is not None:
            conv.kernel.value = 0.5 * jax.random.normal(jax.random.key(i), conv.kernel.value.shape)
    toks = jax.random.randint(jax.random.key(1), (2, SEQ), 0, VOCAB, jnp.int32)
    return Case(request.param, model, toks, forward(model, toks))


def stream(model, toks, cuts):
    cache = model.init_cache(toks.shape[0], toks.shape[1])
    out = []
    for lo, hi in zip([0] + cuts, cuts + [toks.shape[1]], strict=True):
        logits, cache = extend(model, toks[:, lo:hi], cache)
        out.append(logits)
    return jnp.concatenate(out, axis=1)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_registry_covers_every_family():
    assert {"transformer", "titans_lmm", "titans_mac", "titans_mag", "titans_mal", "gated_deltanet"} <= set(NAMES)


def test_forward_shape_and_finite(case):
    assert case.reference.shape == (2, SEQ, VOCAB) and case.reference.dtype == jnp.float32
    assert np.isfinite(np.asarray(case.reference)).all()


def test_decode_after_mid_chunk_prefill_equals_forward(case):
    # a prefill of 6 ends mid-chunk; then one token at a time across two chunk boundaries
    close(stream(case.model, case.toks, list(range(6, SEQ))), case.reference)


def test_pieces_off_the_chunk_grid_equal_one_call(case):
    # pieces of 6, 1, 6, 1, 1 start at in-chunk offsets 0, 2, 3, 1, 2 (the 6-token piece at offset 3
    # crosses two chunk boundaries); lengths 6 and 1 reuse the decode test's compiled calls
    close(stream(case.model, case.toks, [6, 7, 13, 14]), case.reference)


def test_streamed_segments_equal_one_call(case):
    # 4 divides neither SEQ nor the window: 3 scanned segments and a remainder of 3
    close(stream_logits(case.model, case.toks, 4), case.reference)


def test_perturbing_a_token_changes_no_earlier_output(case):
    t = 9  # mid-chunk
    changed = forward(case.model, case.toks.at[:, t].set((case.toks[:, t] + 7) % VOCAB))
    np.testing.assert_array_equal(np.asarray(case.reference[:, :t]), np.asarray(changed[:, :t]))
    assert float(jnp.abs(case.reference[:, t:] - changed[:, t:]).max()) > 0


def test_packed_documents_equal_separate_sequences(case):
    packed, _ = case.training_path()
    # each second document alone, at the start of a row (the rest of the row comes after it, so
    # causality makes it irrelevant; same shape as the reference, so no new compilation)
    alone = forward(case.model, jnp.stack([jnp.roll(case.toks[0], -4), jnp.roll(case.toks[1], -12)]))
    close(packed[0, :4], case.reference[0, :4])  # a first document is the causal forward's prefix
    close(packed[1, :12], case.reference[1, :12])
    close(packed[0, 4:], alone[0, :11])
    close(packed[1, 12:], alone[1, :3])


def test_gradients_are_finite_and_reach_the_memory(case):
    g = nnx.to_pure_dict(case.training_path()[1])  # through packed documents, as in training
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    nonzero = lambda tree: all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(tree))  # noqa: E731
    for block in g["blocks"].values():
        if "persistent_k" in block.get("attn", {}):
            assert nonzero(block["attn"]["persistent_k"])
        mixer = block.get("mixer", {})
        if "gate_heads" not in mixer:
            continue
        # the gates, W_Q, W_K, W_V and W_0 learn only through the memory's inner updates
        assert "lr" in mixer["gate_heads"]
        for name, gate in mixer["gate_heads"].items():
            assert nonzero(gate), name
        for name in ("q", "k", "v", "init_state") + (("feature_coefficients",) if "feature_coefficients" in mixer else ()):
            assert nonzero(mixer[name]), name


def test_greedy_generation_follows_the_forward_argmax(case):
    prompt = case.toks[:, :7]
    out = zoo.generate(case.model, prompt, max_new_tokens=5)
    np.testing.assert_array_equal(out[:, :7], prompt)
    # the forward over the generated text (padded to SEQ with later tokens, which causality makes
    # irrelevant, so the compiled forward is reused)
    logits = forward(case.model, jnp.concatenate([out, case.toks[:, out.shape[1]:]], axis=1))
    np.testing.assert_array_equal(out[:, 7:], jnp.argmax(logits[:, 6:11], axis=-1))


@pytest.mark.parametrize("name", ["titans_lmm"])
def test_remat_policies_same_gradients(name):
    """model.remat "block" (a checkpointed scan over stacked layers) and "memory" (the memory
    mixers recomputed) give the gradients of no remat, on packed documents (the training path).
    The policies live in the LM wrapper (any block) and the shared mixer, so one memory model
    covers them (the LMM: a third of MAG's compile time)."""
    toks = jax.random.randint(jax.random.key(2), (2, 2 * CHUNK * 2), 0, VOCAB, jnp.int32)
    seg = jnp.repeat(jnp.array([[1, 2], [1, 1]]), 2 * CHUNK, axis=1)

    def grads(remat):
        cfg = dataclasses.replace(model_config(name), num_layers=2, remat=remat)
        graphdef, state = nnx.split(zoo.build_model(cfg, rngs=nnx.Rngs(0)))
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(toks, segment_ids=seg) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(state)

    reference = grads("none")
    for policy in ("block", "memory"):
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(grads(policy)), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)

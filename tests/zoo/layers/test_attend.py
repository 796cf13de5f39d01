"""attend(): the blockwise, XLA and tokamax implementations equal a naive reference (outputs and
gradients, fp32) for every feature combination; "auto" picks by platform and features."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo.layers import flash, tokamax_attention
from zoo.layers.attend import attend, choose_implementation

T, HQ, HKV, D = 37, 4, 2, 8


def naive(q, k, v, segment_ids, window, persistent):
    """Softmax attention written out: scores, mask, softmax, weighted sum (GQA by repeating kv)."""
    rep = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    t = q.shape[1]
    pos = jnp.arange(t)
    mask = pos[None, :] <= pos[:, None]
    if window:
        mask &= pos[:, None] - pos[None, :] < window
    mask = jnp.broadcast_to(mask, (q.shape[0], t, t))
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    if persistent is not None:
        pk, pv = (jnp.repeat(p, rep, axis=1) for p in persistent)
        scores = jnp.concatenate([jnp.einsum("bthd,phd->bhtp", q, pk) / np.sqrt(q.shape[-1]), scores], -1)
        mask = jnp.concatenate([jnp.ones(mask.shape[:2] + (pk.shape[0],), bool), mask], -1)
        v = jnp.concatenate([jnp.broadcast_to(pv, (q.shape[0],) + pv.shape), v], 1)
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, -1), v)


def inputs(seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (2, T, HQ, D))
    k = jax.random.normal(ks[1], (2, T, HKV, D))
    v = jax.random.normal(ks[2], (2, T, HKV, D))
    persistent = (jax.random.normal(ks[3], (3, HKV, D)), jax.random.normal(ks[4], (3, HKV, D)))
    seg = jnp.array([[1] * 10 + [2] * 20 + [3] * 7, [1] * T])
    return q, k, v, seg, persistent


# windows: none, inside one block (5), across blocks (13), longer than the sequence (40)
CASES = [(impl, window, segments, persist) for impl, (window, segments, persist) in itertools.product(
    ["xla", "blockwise"], [(0, False, False), (5, True, False), (13, True, True), (40, True, False)])]
# tokamax (its xla_chunked form on CPU): slots without a mask, slots with a window only (the window
# moves into the mask), documents, documents + slots + window
CASES += [("tokamax", window, segments, persist) for window, segments, persist in [
    (0, False, False), (0, False, True), (5, False, True), (5, True, False), (13, True, True)]]


@pytest.mark.parametrize("impl,window,segments,persist", CASES)
def test_matches_naive(impl, window, segments, persist):
    if impl == "tokamax" and not tokamax_attention.available():
        pytest.skip("tokamax is not installed (pip install 'memzoo[tokamax]')")
    q, k, v, seg, persistent = inputs()
    seg = seg if segments else None
    persistent = persistent if persist else None

    slots = lambda p: tuple(p) or None  # noqa: E731
    got_fn = lambda q, k, v, *p: attend(q, k, v, segment_ids=seg, window=window, persistent=slots(p),  # noqa: E731
                                        implementation=impl, block=8)
    want_fn = lambda q, k, v, *p: naive(q, k, v, seg, window, slots(p))  # noqa: E731
    args = (q, k, v) + (persistent or ())
    np.testing.assert_allclose(got_fn(*args), want_fn(*args), atol=2e-5, rtol=2e-5)
    w = jax.random.normal(jax.random.key(9), (2, T, HQ, D))
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * w), argnums=tuple(range(len(args))))(*args)
             for f in (got_fn, want_fn)]
    for name, a, b in zip("q k v pk pv".split(), *grads, strict=False):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5, err_msg=name)


@pytest.mark.skipif(not flash.available(), reason="this jax ships no Pallas GPU attention")
def test_pallas_triton_flash_with_lse_merged_slots_matches_naive():
    """The Triton flash kernel (Pallas' interpreter on CPU) with packed documents, grouped-query heads,
    a T padded to its block, and persistent slots merged by log-sum-exp: outputs and the gradients
    of q, k, v and the slots equal the naive form. The kernel's own VJP drops the lse cotangent;
    flash_with_lse supplies it (zeroing its dq term fails this test on 99% of dq's entries)."""
    q, k, v, seg, persistent = inputs()
    w = jax.random.normal(jax.random.key(9), (2, T, HQ, D))
    got_fn = lambda q, k, v, pk, pv: attend(q, k, v, segment_ids=seg, persistent=(pk, pv),  # noqa: E731
                                            implementation="pallas_triton")
    want_fn = lambda q, k, v, pk, pv: naive(q, k, v, seg, 0, (pk, pv))  # noqa: E731
    args = (q, k, v) + persistent
    np.testing.assert_allclose(got_fn(*args), want_fn(*args), atol=2e-5, rtol=2e-5)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * w), argnums=tuple(range(5)))(*args) for f in (got_fn, want_fn)]
    for name, a, b in zip("q k v pk pv".split(), *grads, strict=True):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5, err_msg=name)


@pytest.mark.skipif(not tokamax_attention.available(), reason="tokamax is not installed")
def test_model_attention_config_reaches_every_attention_layer():
    """`model.attention` flows from the config to a model's attention: Titans MAG (sliding window,
    persistent slots) on packed documents gives the same logits with tokamax as with xla."""
    import zoo
    from zoo.config import ModelConfig

    def logits(implementation):
        cfg = ModelConfig(name="titans_mag", vocab_size=31, d_model=16, num_layers=1, num_heads=2, sliding_window=5,
                          persistent_tokens=2, attention=implementation,
                          memory=zoo.registry.memory_config("titans_mag", chunk_size=4))
        model = zoo.build_model(cfg, rngs=nnx.Rngs(0))
        toks = jax.random.randint(jax.random.key(1), (2, 12), 0, 31)
        seg = jnp.array([[1] * 4 + [2] * 8, [1] * 12])
        return nnx.jit(lambda m: m(toks, segment_ids=seg))(model)

    np.testing.assert_allclose(logits("tokamax"), logits("xla"), atol=1e-5, rtol=1e-5)


def test_merge_by_lse_is_attention_over_the_union():
    q, k, v, _, _ = inputs()
    scale = D**-0.5
    k, v = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    half = [(k[:, :3, :, :].transpose(1, 0, 2, 3).reshape(6, HQ, D)[i::2], v[:, :3].transpose(1, 0, 2, 3)
             .reshape(6, HQ, D)[i::2]) for i in (0, 1)]  # two disjoint sets of 3 slots
    (o1, l1), (o2, l2) = (flash.slot_attention(q, pk, pv, scale) for pk, pv in half)
    both = flash.slot_attention(q, jnp.concatenate([half[0][0], half[1][0]]),
                                jnp.concatenate([half[0][1], half[1][1]]), scale)
    np.testing.assert_allclose(flash.merge_by_lse(o1, l1, o2, l2), both[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(jnp.logaddexp(l1, l2), both[1], atol=1e-5, rtol=1e-5)


def test_auto_choice():
    bf16 = jnp.bfloat16
    pick = lambda **kw: choose_implementation("auto", **{**dict(  # noqa: E731
        platform="gpu", seq=4096, block=512, segment_ids=None, persistent=None, dtype=bf16), **kw})
    assert pick() == "cudnn"
    assert pick(segment_ids=jnp.ones((1, 4096))) == "blockwise"  # packed documents: no dense T^2 mask
    assert pick(persistent=(1, 1)) == "blockwise"
    assert pick(dtype=jnp.float32) == "blockwise"  # cuDNN's flash kernel takes bf16 / fp16 only
    assert pick(platform="cpu") == "blockwise"
    assert pick(platform="cpu", seq=512) == "xla"


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="allowed: auto, xla, blockwise, cudnn, pallas_triton, tokamax"):
        choose_implementation("flash", platform="cpu", seq=8, block=8, segment_ids=None, persistent=None,
                              dtype=jnp.float32)
    with pytest.raises(ValueError, match="use 'blockwise'"):
        choose_implementation("cudnn", platform="gpu", seq=8, block=8, segment_ids=jnp.ones((1, 8)),
                              persistent=None, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"'pallas_triton' does not take a sliding window \(8\)"):
        choose_implementation("pallas_triton", platform="gpu", seq=8, block=8, segment_ids=None, persistent=None,
                              dtype=jnp.bfloat16, window=8)
    q, k, v, _, _ = inputs()
    with pytest.raises(ValueError, match="self-attention"):
        attend(q, k[:, :5], v[:, :5])


def test_blockwise_memory_is_linear_in_length():
    """Loss + gradients: doubling T doubles the blockwise form's memory (one block of scores at a
    time) and quadruples the dense one's; a sliding window makes the blockwise form smaller still."""

    def temp(impl, t, window=0, segments=True):
        shape = jax.ShapeDtypeStruct((1, t, 4, 32), jnp.float32)
        seg = jax.ShapeDtypeStruct((1, t), jnp.int32) if segments else None
        f = jax.grad(lambda q, k, v, s: attend(q, k, v, segment_ids=s, window=window, implementation=impl).sum(),
                     argnums=(0, 1, 2))
        return jax.jit(f).lower(shape, shape, shape, seg).compile().memory_analysis().temp_size_in_bytes

    assert temp("xla", 4096) > 3.5 * temp("xla", 2048)
    assert temp("blockwise", 4096) < 2.5 * temp("blockwise", 2048)
    assert temp("blockwise", 4096, window=256) < temp("blockwise", 4096) / 2
    if tokamax_attention.available():  # tokamax's xla_chunked form, causal without documents: no mask, no T^2
        assert temp("tokamax", 4096, segments=False) < 2.5 * temp("tokamax", 2048, segments=False)

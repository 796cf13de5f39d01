"""The chunked cross-entropy equals the whole-sequence one (loss, counts, gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.training.losses import chunked_token_losses


def _inputs(t=13, d=8, vocab=11):
    ks = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(ks[0], (2, t, d))
    head = jax.random.normal(ks[1], (d, vocab))
    targets = jax.random.randint(ks[2], (2, t), 0, vocab)
    mask = (jax.random.uniform(ks[3], (2, t)) > 0.3).astype(jnp.float32)
    return hidden, head, targets, mask


def _dense(hidden, head, targets, mask):
    logp = jax.nn.log_softmax(hidden @ head, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logp, -1) == targets).astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask), jnp.sum(correct * mask)


@pytest.mark.parametrize("piece", [0, 1, 4, 5, 13, 64])
def test_chunked_equals_dense(piece):
    hidden, head, targets, mask = _inputs()

    def chunked(hidden, head):
        return chunked_token_losses(lambda h: h @ head, hidden, targets, mask, piece=piece)

    got, want = chunked(hidden, head), _dense(hidden, head, targets, mask)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)
    g_got = jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1))(hidden, head)
    g_want = jax.grad(lambda h, w: _dense(h, w, targets, mask)[0], argnums=(0, 1))(hidden, head)
    for a, b in zip(g_got, g_want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_loss_keeps_one_piece_of_logits():
    """The compiled loss+gradient holds far less than the [batch, seq, vocab] logits."""
    hidden, head = jnp.zeros((1, 4096, 16)), jnp.zeros((16, 8192))
    targets, mask = jnp.zeros((1, 4096), jnp.int32), jnp.ones((1, 4096))

    def temp(piece):
        f = jax.jit(jax.grad(lambda h, w: chunked_token_losses(lambda x: x @ w, h, targets, mask, piece=piece)[0],
                             argnums=(0, 1)))
        return f.lower(hidden, head).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 4096 * 8192 * 4
    assert temp(0) >= logits_bytes
    assert temp(256) < logits_bytes / 4


def test_shape_mismatch_is_named():
    hidden, head, targets, mask = _inputs()
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        chunked_token_losses(lambda h: h @ head, hidden[:, :5], targets, mask, piece=4)

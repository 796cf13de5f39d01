"""The jitted training and evaluation steps (next-token cross-entropy, masked by loss_mask)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.training.losses import chunked_token_losses
from zoo.training.state import ModelParts, TrainState


def token_losses(parts: ModelParts, params: Any, batch: dict, *, loss_chunk: int = 0
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed masked NLL, number of scored tokens, number of correct argmax predictions.

    batch: inputs / targets / segment_ids int32 [batch, seq], loss_mask float32 [batch, seq].
    loss_chunk: positions per piece of the chunked cross-entropy (0 = all at once).
    """
    model = parts.model_from(params)
    hidden = model.hidden(batch["inputs"], segment_ids=batch["segment_ids"])  # [batch, seq, d_model]
    return chunked_token_losses(model.logits_from_hidden, hidden, batch["targets"], batch["loss_mask"],
                                piece=loss_chunk)


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    loss_chunk: int = 0) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """step(state, batch) with batch arrays shaped [grad_accum, micro_batch, seq].

    Gradients of the *summed* token loss are accumulated over micro-batches and divided by the
    total token count once, so any grad_accum gives the same update as one big batch. A step
    whose loss or gradients are not finite leaves the state unchanged and reports finite=0.
    """

    def loss_fn(params, micro_batch):
        loss_sum, count, correct = token_losses(parts, params, micro_batch, loss_chunk=loss_chunk)
        return loss_sum, (count, correct)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def micro(carry, mb):
            grads, loss_sum, count, correct = carry
            (ls, (n, c)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, mb)
            return (jax.tree.map(jnp.add, grads, g), loss_sum + ls, count + n, correct + c), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
        (grads, loss_sum, count, correct), _ = jax.lax.scan(micro, init, batch)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = loss_sum / denom
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        new_state = TrainState(
            step=jnp.where(finite, state.step + 1, state.step), params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state), rng=jnp.where(finite, rng, state.rng))
        metrics = {"loss": loss, "accuracy": correct / denom, "tokens": count, "grad_norm": grad_norm,
                   "learning_rate": schedule(state.step), "finite": finite.astype(jnp.float32)}
        return new_state, metrics

    return step


def make_eval_step(parts: ModelParts, *, loss_chunk: int = 0) -> Callable[[Any, dict], dict]:
    """eval_step(params, batch [batch, seq]) -> summed loss, token count and correct count."""

    def eval_step(params: Any, batch: dict) -> dict:
        loss_sum, count, correct = token_losses(parts, params, batch, loss_chunk=loss_chunk)
        return {"loss_sum": loss_sum, "tokens": count, "correct": correct}

    return eval_step

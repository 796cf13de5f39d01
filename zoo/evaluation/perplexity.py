"""Held-out perplexity: exp(mean next-token NLL over every scored token)."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from zoo.training.sharding import put_global_batch


def pad_batch(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pads a short last batch with unscored rows (loss_mask 0) so every batch has `rows` rows."""
    have = next(iter(batch.values())).shape[0]
    if have == rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - have,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def evaluate_perplexity(eval_step: Callable[[Any, dict], dict], params: Any, batches: list[dict],
                        mesh: jax.sharding.Mesh, batch_size: int) -> dict:
    """Runs the jitted `eval_step(params, batch)` over `batches`; returns loss, perplexity,
    accuracy (argmax next-token) and the number of scored tokens."""
    if not batches:
        raise ValueError("no held-out batches: raise data.heldout_fraction or provide more data")
    loss_sum = tokens = correct = 0.0
    for batch in batches:
        out = jax.device_get(eval_step(params, put_global_batch(pad_batch(batch, batch_size), mesh)))
        loss_sum += float(out["loss_sum"])
        tokens += float(out["tokens"])
        correct += float(out["correct"])
    if tokens == 0:
        raise ValueError("the held-out batches contain no scored tokens")
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / tokens,
            "tokens": int(tokens), "batches": len(batches)}

"""Held-out perplexity: exp(mean next-token NLL over every scored token)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from zoo.streaming import stream_nll


def evaluate_perplexity(eval_step: Callable[[Any, dict], dict], params: Any, batches: list[dict[str, np.ndarray]],
                        place: Callable[[dict], dict]) -> dict:
    """Runs the jitted `eval_step(params, batch)` over host `batches` (each put on devices by
    `place`); returns loss, perplexity, next-token accuracy and the number of scored tokens."""
    if not batches:
        raise ValueError("no held-out batches: raise data.heldout_fraction or provide more data")
    loss_sum = tokens = correct = 0.0
    for batch in batches:
        out = jax.device_get(eval_step(params, place(batch)))
        loss_sum += float(out["loss_sum"])
        tokens += float(out["tokens"])
        correct += float(out["correct"])
    if tokens == 0:
        raise ValueError("the held-out batches contain no scored tokens")
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / tokens,
            "tokens": int(tokens), "batches": len(batches)}


def cached_perplexity(model, batches: list[dict[str, np.ndarray]], segment_len: int) -> float:
    """Perplexity of held-out `batches` (inputs, targets, loss_mask `[batch, seq]`) fed through the
    model's decoding cache in segments of `segment_len` (`zoo.streaming.stream_nll`): the number a
    KV-cache format (`zoo.set_kv_cache`) changes. Rows are scored as single sequences."""
    if not batches:
        raise ValueError("no held-out batches: raise data.heldout_fraction or provide more data")
    inputs, targets, mask = (np.concatenate([b[key] for b in batches]) for key in ("inputs", "targets", "loss_mask"))
    nll = np.asarray(stream_nll(model, inputs, targets, segment_len))
    return math.exp(min(float(np.sum(nll * mask) / np.sum(mask)), 700.0))

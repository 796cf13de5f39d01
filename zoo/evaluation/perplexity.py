"""Held-out perplexity: exp(mean next-token NLL over every scored token)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


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

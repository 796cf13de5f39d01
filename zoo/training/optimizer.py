"""AdamW with warmup + cosine/linear decay, global-norm clipping, weight decay on matrices only."""

from __future__ import annotations

import jax
import optax

from zoo.config import Config


def make_schedule(cfg: Config) -> optax.Schedule:
    """Learning rate per optimizer step: linear warmup to the peak, then the configured decay."""
    peak, s = cfg.optimizer.learning_rate, cfg.schedule
    warmup = min(s.warmup_steps, cfg.train.steps)
    decay_steps = max((s.decay_steps or cfg.train.steps) - warmup, 1)
    end = peak * s.min_lr_ratio
    if s.kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=s.min_lr_ratio)
    elif s.kind == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params) -> object:
    """Weight decay only for matrices (ndim >= 2), never for norm scales or other vectors."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    o = cfg.optimizer
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    parts.append(optax.adamw(make_schedule(cfg), b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay, mask=decay_mask))
    return optax.chain(*parts)

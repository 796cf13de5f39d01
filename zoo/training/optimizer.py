"""AdamW with warmup + cosine/linear decay, global-norm clipping, weight decay on matrices only;
`train.trainable` freezes every parameter whose path does not match (no optimizer state for it)."""

from __future__ import annotations

import re

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


def parameter_path(path) -> str:
    """"blocks/0/mixer/q/kernel": a params-dict key path as `train.trainable` matches it."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_mask(params, pattern: str):
    """True for the parameters `train.trainable` trains (all when it is empty)."""
    regex = re.compile(pattern) if pattern else None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: regex is None or regex.search(parameter_path(path)) is not None, params)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    o = cfg.optimizer
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    parts.append(optax.adamw(make_schedule(cfg), b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay, mask=decay_mask))
    tx = optax.chain(*parts)
    if not cfg.train.trainable:
        return tx
    # frozen parameters: a zero update and no state; clipping sees the trained gradients only
    labels = lambda params: jax.tree.map(lambda train: "train" if train else "frozen",  # noqa: E731
                                         trainable_mask(params, cfg.train.trainable))
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

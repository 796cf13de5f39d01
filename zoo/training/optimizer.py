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
    """Clipping, then AdamW. Parameters outside `train.trainable` get a zero update and no state
    (clipping sees the trained gradients only); a group the model updates every p steps
    (`zoo.registry.update_groups`: Hope's continuum memory) takes one AdamW step every p steps on
    the gradients summed since its last step, at the learning rate of the current step."""
    from zoo import registry  # late: the registry imports the models

    o = cfg.optimizer
    schedule = make_schedule(cfg)

    def adamw(period: int) -> optax.GradientTransformation:
        lr = schedule if period == 1 else (lambda count: schedule(count * period + period - 1))  # the outer step
        return optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)

    groups = registry.update_groups(cfg.model)
    clip = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    if not cfg.train.trainable and not groups:
        return optax.chain(*clip, adamw(1))
    compiled = {re.compile(regex): period for regex, period in groups.items()}

    def labels(params):
        def label(path, train):
            if not train:
                return "frozen"
            name = parameter_path(path)
            return f"every_{next((p for r, p in compiled.items() if r.search(name)), 1)}"

        return jax.tree_util.tree_map_with_path(label, trainable_mask(params, cfg.train.trainable))

    steps = {f"every_{p}": optax.MultiSteps(adamw(p), every_k_schedule=p, use_grad_mean=False).gradient_transformation()
             for p in set(groups.values()) if p > 1}
    steps |= {"every_1": adamw(1), "frozen": optax.set_to_zero()}
    frozen_to_zero = optax.multi_transform(
        {name: optax.set_to_zero() if name == "frozen" else optax.identity() for name in steps}, labels)
    return optax.chain(frozen_to_zero, *clip, optax.multi_transform(steps, labels))

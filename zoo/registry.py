"""Model name -> builder. `models()` is also what README's model table is generated from."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

from flax import nnx


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    paper: str
    tiny_config: str  # path (relative to the repository root) of a CPU-sized YAML config
    status: str  # "ready" once the model's equivalence tests pass
    builder: Callable = dataclasses.field(repr=False, compare=False)
    uses_memory: bool = False  # has zoo.memory mixers (documents must start on their chunk grid)
    hybrid: bool = False  # accepts model.hybrid_attention (attention blocks between its own blocks)
    # model.memory fields this model sets differently from MemoryConfig's defaults (the Titans
    # memory); a config file's own model.memory values still win over them.
    memory_defaults: dict = dataclasses.field(default_factory=dict, compare=False)
    # parameter groups the outer optimiser updates less often: ModelConfig -> {path regex: period}
    # (Hope's continuum memory levels; zoo.training.optimizer)
    update_groups: Callable | None = dataclasses.field(default=None, compare=False)


_MODELS: dict[str, ModelInfo] = {}


def register(name: str, *, family: str, paper: str, tiny_config: str, status: str = "ready",
             uses_memory: bool = False, hybrid: bool = False, memory_defaults: dict | None = None,
             update_groups: Callable | None = None):
    """Decorator: `@register("titans_mac", family=..., paper=..., tiny_config=...)` on a
    `builder(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module`."""

    def wrap(builder: Callable) -> Callable:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = ModelInfo(name, family, paper, tiny_config, status, builder, uses_memory, hybrid,
                                  dict(memory_defaults or {}), update_groups)
        return builder

    return wrap


def models() -> dict[str, ModelInfo]:
    """Every registered model, by name."""
    import zoo.models  # noqa: F401  (registers the families on first use)

    return dict(_MODELS)


def memory_config(name: str, **overrides):
    """The `zoo.config.MemoryConfig` model `name` uses unless told otherwise, with `overrides`:
    `ModelConfig(name="gated_deltanet", memory=memory_config("gated_deltanet", num_heads=4))`."""
    from zoo.config import MemoryConfig

    return MemoryConfig(**{**_info(name).memory_defaults, **overrides})


def update_groups(model_cfg) -> dict[str, int]:
    """{parameter path regex: update period} of the groups model `model_cfg.name` updates every
    `period` optimiser steps ({} for most models)."""
    groups = _info(model_cfg.name).update_groups
    return {} if groups is None else groups(model_cfg)


def _info(name: str) -> ModelInfo:
    table = models()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model '{name}'; registered: {', '.join(table)}.{hint}")
    return table[name]


def build_model(cfg, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model `cfg.name` names (cfg: `zoo.config.ModelConfig`)."""
    return _info(cfg.name).builder(cfg, rngs if rngs is not None else nnx.Rngs(0))

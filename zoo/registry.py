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


_MODELS: dict[str, ModelInfo] = {}


def register(name: str, *, family: str, paper: str, tiny_config: str, status: str = "ready",
             uses_memory: bool = False):
    """Decorator: `@register("titans_mac", family=..., paper=..., tiny_config=...)` on a
    `builder(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module`."""

    def wrap(builder: Callable) -> Callable:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = ModelInfo(name, family, paper, tiny_config, status, builder, uses_memory)
        return builder

    return wrap


def models() -> dict[str, ModelInfo]:
    """Every registered model, by name."""
    import zoo.models  # noqa: F401  (registers the families on first use)

    return dict(_MODELS)


def build_model(cfg, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model `cfg.name` names (cfg: `zoo.config.ModelConfig`)."""
    table = models()
    if cfg.name not in table:
        close = difflib.get_close_matches(cfg.name, list(table), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model '{cfg.name}'; registered: {', '.join(table)}.{hint}")
    return table[cfg.name].builder(cfg, rngs if rngs is not None else nnx.Rngs(0))

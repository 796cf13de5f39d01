"""Train state as plain pytrees: the model's parameters (a nested dict), optimizer state, step, RNG.

The model is split once into a static `graphdef` and its parameters; steps merge them back
inside jit. Parameters are kept as a pure nested dict (`nnx.to_pure_dict`) so optax, orbax and
sharding all see ordinary pytrees.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding

from zoo.config import Config
from zoo.registry import build_model
from zoo.training.sharding import logical_to_spec, replicated


@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32, optimizer steps taken
    params: Any  # nested dict of float32 arrays
    opt_state: Any
    rng: jax.Array  # [2] uint32 raw key data, advanced every step (for stochastic layers)


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The static half of a model: `model_from(params)` rebuilds the module from a params dict."""

    graphdef: Any
    abstract_state: Any  # nnx.State of ShapeDtypeStructs carrying the logical-axis metadata

    def model_from(self, params: Any) -> nnx.Module:
        state = jax.tree.map(lambda x: x, self.abstract_state)  # a fresh copy: the replace is in place
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def abstract_params(self) -> Any:
        return nnx.to_pure_dict(self.abstract_state)

    def param_specs(self, mesh: jax.sharding.Mesh) -> Any:
        """PartitionSpecs of the params dict from each parameter's logical axes."""
        specs = jax.tree.map(
            lambda v: logical_to_spec(getattr(v, "logical_axes", (None,) * v.value.ndim), v.value.shape, mesh),
            self.abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        return nnx.to_pure_dict(specs)


def model_parts(cfg: Config) -> ModelParts:
    """Traces the model's construction without allocating it."""
    abstract = nnx.eval_shape(lambda: build_model(cfg.model, rngs=nnx.Rngs(cfg.train.seed)))
    graphdef, state = nnx.split(abstract)
    non_params = nnx.split(abstract, nnx.Param, ...)[2]
    if jax.tree.leaves(non_params):
        raise TypeError("every model variable must be an nnx.Param; found other state: "
                        f"{jax.tree.map(lambda x: x.shape, non_params)}")
    return ModelParts(graphdef, state)


def state_shardings(parts: ModelParts, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
    """NamedShardings for every leaf of the TrainState: an optimizer leaf whose key path ends in a
    parameter's path, with that parameter's shape, is sharded like it (Adam's moments, also inside
    the partitions of frozen training); any other leaf (counters) is replicated."""
    param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), parts.param_specs(mesh))
    params = parts.abstract_params()
    by_path = {tuple(map(_key, path)): (x.shape, sh) for (path, x), sh in
               zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_sh), strict=True)}
    depth = max((len(p) for p in by_path), default=0)

    def leaf_sharding(path, leaf):
        keys = tuple(map(_key, path))
        for n in range(min(depth, len(keys)), 0, -1):
            shape, sh = by_path.get(keys[-n:], (None, None))
            if sh is not None and shape == leaf.shape:
                return sh
        return replicated(mesh)

    opt_sh = jax.tree_util.tree_map_with_path(leaf_sharding, jax.eval_shape(tx.init, params))
    rep = replicated(mesh)
    return TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)


def _key(entry) -> str:
    """One key of a pytree path as a string (dict key, sequence index or attribute name)."""
    return str(getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry))))


def init_train_state(cfg: Config, parts: ModelParts, tx: optax.GradientTransformation,
                     shardings: TrainState) -> TrainState:
    """Initialises parameters (seed `train.seed`) and optimizer directly into their shardings."""

    def init():
        model = build_model(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
        params = nnx.to_pure_dict(nnx.state(model))
        rng = jax.random.key_data(jax.random.key(cfg.train.seed + 1))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)

    return jax.jit(init, out_shardings=shardings)()


def abstract_train_state(parts: ModelParts, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs (with target shardings) of a TrainState, for restoring checkpoints."""
    params = parts.abstract_params()
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

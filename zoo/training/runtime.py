"""Everything derived from a config and a mesh that training, evaluation and restoring share."""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property

import jax
import optax

from zoo.config import Config, ConfigError
from zoo.training.optimizer import make_optimizer, make_schedule, parameter_path, trainable_mask
from zoo.training.sharding import batch_sharding
from zoo.training.state import (
    ModelParts,
    TrainState,
    abstract_train_state,
    init_train_state,
    model_parts,
    state_shardings,
)
from zoo.training.step import make_eval_step, make_train_step


@dataclasses.dataclass
class Runtime:
    """`Runtime(cfg, mesh)`: the model's parts, the optimizer, state shardings and jitted steps."""

    cfg: Config
    mesh: jax.sharding.Mesh

    def __post_init__(self):
        self.parts: ModelParts = model_parts(self.cfg)
        if self.cfg.train.trainable and self.num_trainable() == 0:
            paths = [parameter_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(self.parts.abstract_params())]
            raise ConfigError(f"train.trainable={self.cfg.train.trainable!r} matches no parameter of model "
                              f"'{self.cfg.model.name}'; its parameters are named like {', '.join(paths[:6])}, ...")
        self.schedule: optax.Schedule = make_schedule(self.cfg)
        self.tx: optax.GradientTransformation = make_optimizer(self.cfg)
        self.shardings: TrainState = state_shardings(self.parts, self.tx, self.mesh)

    @property
    def batch_shards(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def check_batch(self, rows: int, key: str) -> None:
        if rows % self.batch_shards:
            raise ConfigError(f"{key}: {rows} sequences per (micro-)batch cannot be split over the "
                              f"{self.batch_shards} data x fsdp shards of the mesh; make it a multiple of "
                              f"{self.batch_shards} (or change mesh.data / mesh.fsdp)")

    def init_state(self) -> TrainState:
        return init_train_state(self.cfg, self.parts, self.tx, self.shardings)

    def state_from_params(self, params) -> TrainState:
        """Step 0 with the given parameters (another run's, on any devices) and a fresh optimizer,
        in this runtime's shardings. Raises ConfigError naming any parameter that differs."""
        want = self.parts.abstract_params()
        got_paths = {parameter_path(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
        want_paths = {parameter_path(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(want)}
        if got_paths != want_paths:
            diff = sorted(set(got_paths.items()) ^ set(want_paths.items()))[:6]
            raise ConfigError(f"train.init_from: that run's parameters do not fit model '{self.cfg.model.name}' "
                              f"(first differences, path and shape: {diff}); both runs need the same model shape")
        fresh = self.init_state()
        state = jax.jit(lambda p: fresh.replace(params=p, opt_state=self.tx.init(p)),
                        out_shardings=self.shardings)(params)
        return state

    def num_trainable(self) -> int:
        """Parameters `train.trainable` trains (all when it is empty)."""
        params = self.parts.abstract_params()
        mask = trainable_mask(params, self.cfg.train.trainable)
        return sum(math.prod(x.shape) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)

    def abstract_state(self) -> TrainState:
        return abstract_train_state(self.parts, self.tx, self.shardings)

    @cached_property
    def train_step(self):
        """Jitted step(state, batch [grad_accum, micro_batch, seq]) -> (state, metrics)."""
        batch_sh = batch_sharding(self.mesh, 3, batch_dim=1)
        return jax.jit(make_train_step(self.parts, self.tx, self.schedule, loss_chunk=self.cfg.train.loss_chunk),
                       in_shardings=(self.shardings, batch_sh), out_shardings=(self.shardings, None),
                       donate_argnums=0)

    @cached_property
    def eval_step(self):
        """Jitted eval_step(params, batch [batch, seq]) -> sums for perplexity."""
        return jax.jit(make_eval_step(self.parts, loss_chunk=self.cfg.train.loss_chunk),
                       in_shardings=(self.shardings.params, batch_sharding(self.mesh, 2)))

    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.parts.abstract_params()))

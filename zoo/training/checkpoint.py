"""Orbax checkpoints of the TrainState plus a JSON record (data-iterator state, config, metrics).

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Arrays are restored onto the *current*
mesh through abstract targets with shardings, so a run saved on 8 devices resumes on 4 or 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from zoo.config import CheckpointConfig
from zoo.training.state import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model being restored."""


def _stringify(tree: Any) -> Any:
    """Nested dicts with any keys -> nested dicts with str keys (orbax-friendly)."""
    if isinstance(tree, dict):
        return {str(k): _stringify(v) for k, v in tree.items()}
    return tree


def _like(template: Any, tree: Any, where: str = "params") -> Any:
    """Inverse of `_stringify`, following the key types of `template`."""
    if isinstance(template, dict):
        missing = [str(k) for k in template if str(k) not in tree]
        if missing:
            raise CheckpointError(f"checkpoint lacks {where}.{missing[0]}: it was written by a different model "
                                  "configuration; restore it with the config saved next to it")
        return {k: _like(v, tree[str(k)], f"{where}.{k}") for k, v in template.items()}
    return tree


def _to_saveable(state: TrainState) -> dict:
    opt_leaves = jax.tree.leaves(state.opt_state)
    return {"step": state.step, "rng": state.rng, "params": _stringify(state.params),
            "opt_state": {f"{i:05d}": leaf for i, leaf in enumerate(opt_leaves)}}


def _from_saveable(saved: dict, template: TrainState) -> TrainState:
    treedef = jax.tree.structure(template.opt_state)
    leaves = [saved["opt_state"][k] for k in sorted(saved["opt_state"])]
    if len(leaves) != treedef.num_leaves:
        raise CheckpointError(f"checkpoint optimizer state has {len(leaves)} arrays, this optimizer "
                              f"{treedef.num_leaves}: the optimizer settings changed since it was saved")
    return TrainState(step=saved["step"], rng=saved["rng"], params=_like(template.params, saved["params"]),
                      opt_state=jax.tree.unflatten(treedef, leaves))


class Checkpointer:
    """Saves every `every_steps` (asynchronously if configured), keeps the newest `keep`."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig = CheckpointConfig(), *, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.cfg = cfg
        if read_only:  # the settings orbax itself forces for readers, given up front
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                                   max_to_keep=None, enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_to_saveable(state)), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores `step` (default: newest) onto the shardings in `abstract_state`."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}; train first "
                                  "(python train.py --config FILE --workdir DIR)")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_to_saveable(abstract_state)), meta=ocp.args.JsonRestore()))
        except CheckpointError:
            raise
        except Exception as e:  # orbax raises many types for truncated / foreign files
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be read ({type(e).__name__}: "
                f"{str(e)[:300]}). It may be corrupt or from another model; restore an older step "
                f"with --step (available: {steps}) or delete {self.directory / str(step)}") from e
        return _from_saveable(restored["state"], abstract_state), dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

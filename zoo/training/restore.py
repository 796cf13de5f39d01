"""Restoring a trained run from its workdir onto whatever devices are present."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from zoo.config import Config, ConfigError, MeshConfig, load_config
from zoo.training.checkpoint import Checkpointer, CheckpointError
from zoo.training.runtime import Runtime
from zoo.training.sharding import make_mesh, mesh_shape
from zoo.training.state import TrainState


@dataclasses.dataclass
class RestoredRun:
    workdir: Path
    cfg: Config
    runtime: Runtime
    state: TrainState
    meta: dict
    step: int

    @property
    def model(self) -> nnx.Module:
        return self.runtime.parts.model_from(self.state.params)


def run_config(workdir: str | Path) -> Config:
    """The resolved config a training run wrote into its workdir."""
    path = Path(workdir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{workdir} holds no config.yaml: is it the --workdir of a train.py run?")
    return load_config(path)


def eval_mesh_config(cfg: Config, num_devices: int) -> MeshConfig:
    """The run's own mesh if it fits the devices present, else parameters sharded over all of them."""
    try:
        mesh_shape(cfg.mesh, num_devices)
        return cfg.mesh
    except ConfigError:
        return MeshConfig(data=1, fsdp=-1, tensor=1)


def restore_run(workdir: str | Path, step: int | None = None, devices: list | None = None) -> RestoredRun:
    """Reads config.yaml and checkpoint `step` (default newest) of a workdir onto `devices`."""
    cfg = run_config(workdir)
    devices = jax.devices() if devices is None else devices
    cfg = dataclasses.replace(cfg, mesh=eval_mesh_config(cfg, len(devices)))
    runtime = Runtime(cfg, make_mesh(cfg.mesh, devices))
    ckpt = Checkpointer(Path(workdir) / "checkpoints", cfg.checkpoint, read_only=True)
    try:
        state, meta = ckpt.restore(runtime.abstract_state(), step)
    finally:
        ckpt.close()
    return RestoredRun(Path(workdir), cfg, runtime, state, meta, int(jax.device_get(state.step)))


def load_checkpoint(workdir: str | Path, step: int | None = None) -> tuple[nnx.Module, Config]:
    """`model, cfg = zoo.load_checkpoint(workdir)`: a trained model on the devices present."""
    run = restore_run(workdir, step)
    return run.model, run.cfg

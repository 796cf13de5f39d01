"""Training: sharding rules, optimizer, state, steps, checkpoints, metrics and the loop."""

from zoo.training.checkpoint import Checkpointer, CheckpointError
from zoo.training.loop import NonFiniteLossError, TrainResult, train
from zoo.training.restore import RestoredRun, load_checkpoint, restore_run
from zoo.training.runtime import Runtime
from zoo.training.sharding import make_mesh

__all__ = [
           "CheckpointError",
           "Checkpointer",
           "NonFiniteLossError",
           "RestoredRun",
           "Runtime",
           "TrainResult",
           "load_checkpoint",
           "make_mesh",
           "restore_run",
           "train",
]

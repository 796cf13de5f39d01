"""The associative-memory interface (DESIGN §3): spec, state, structures, objectives,
retention, learners and the chunk engine every memory family plugs into."""

# the registered parts (zoo.memory.parts): importing a part's module registers it
from zoo.memory import feature_maps, learners, objectives, retention, structures  # noqa: F401  (isort: keep before the engine)
from zoo.memory import compression, elastic_net, huber, kl, lattice, lp, lq, muon, window  # noqa: F401, I001

from zoo.memory.engine import Gates, chunk, chunk_parallel, decode_step, read, reference_chunked, step, step_loop
from zoo.memory.spec import MemorySpec
from zoo.memory.state import MemState, initial_state
from zoo.memory.structures import init_weights

__all__ = ["Gates", "MemState", "MemorySpec", "chunk", "chunk_parallel", "decode_step", "init_weights",
           "initial_state", "read", "reference_chunked", "step", "step_loop"]

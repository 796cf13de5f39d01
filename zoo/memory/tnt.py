"""TNT (Li et al. 2025, arXiv:2511.07343; spec §4): hierarchical memory around ANY memory spec.

One input path (q, k, v projections, conv, feature map) feeds
  - a global memory V (the wrapped `model.memory` spec, chunk C_G = `memory.chunk_size`), whose
    every gradient in a chunk is taken at the chunk start (Eq. 5, with the spec's own learner,
    momentum and retention: spec §4.8 item 3) and whose read is at the chunk-START state:
    f(V_{a_G(t)}, q_t), a plain batched forward, causal (Eq. 7; spec §4.2);
  - N local memories W^(n) (`tnt.local_chunks` = their chunk sizes C_L), each with its own gates and
    its own learned W_init, that restart at W_init every `tnt.shard` = S_L tokens (Eq. 6): no state
    crosses a shard, so a fresh sequence runs all its shards at once as a batch of [B * T / S_L]
    rows. They read the projected query P_t q_t (Eq. 7, zoo.memory.qk_projection) after the write.
The reads add up: o_t = f(V, q_t) + sum_n f(W^(n)_t, P_t q_t) (spec §4.4, our reading of App. E),
then the mixer's output path (per-head RMSNorm, SiLU gate, W_O).

With the global branch off, P = I (`qk_range: off`), no resets (`shard: 0`) and W_init = W_0,
TNT is the wrapped memory at C = C_L (spec §4.8 item 6; tests/zoo/memory/test_tnt.py).
Stage 2 (spec §4.3) is a config: smaller `local_chunks`, `train.init_from` the stage-1 run and
`train.trainable: local_memories` (only the locals learn).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx, struct
from kernels.common import where_leading

from zoo.memory import engine
from zoo.memory.layer import AssociativeMemory, MemoryMixer, decode_heads, run_mixer
from zoo.memory.qk_projection import SCALES, project_queries
from zoo.memory.spec import MemorySpec
from zoo.memory.state import MemState

if TYPE_CHECKING:
    from zoo.config import MemoryConfig

QK_RANGES = ("shard", "document", "chunk", "off")
COMBINES = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class TNTFormat:
    """model.tnt (model.name=tnt). The global memory is `model.memory` (its chunk_size is C_G).

    local_chunks: C_L of each local memory (Stage 1 of the paper: [8] ... [4, 8, 16, 32]; Stage 2:
        [1] ... [2, 4, 8, 16]); each divides `shard`.
    shard: S_L, the locals restart at their W_init every S_L tokens (0 = never; the paper: 2048
        for speed, 4096 for quality).
    global_memory: the global branch (false = the "w/o global memory" ablation, Table 3).
    qk_range: the keys in P_t (spec §4.8 item 1): "shard" (since the shard start; keeps shards
        independent), "document" (since the document start, the text's running sum), "chunk" (the
        current chunk of the first local memory, Eq. 7's printed limit) or "off" (P = I, the
        "w/o Q-K projection" ablation).
    qk_scale: "none" (the paper) or "count" (P_t divided by its number of keys; item 2).
    combine: how the local reads join the global one (spec §4.4, App. E not retrieved): "sum"
        (o = f(V, q) + sum_n f(W^(n), P q)) or "mean" (the locals' average instead of their sum).
    """

    local_chunks: tuple[int, ...] = (8,)
    shard: int = 2048
    global_memory: bool = True
    qk_range: str = dataclasses.field(default="shard", metadata={"choices": QK_RANGES})
    qk_scale: str = dataclasses.field(default="none", metadata={"choices": SCALES})
    combine: str = dataclasses.field(default="sum", metadata={"choices": COMBINES})

    def check(self, spec: MemorySpec) -> None:
        """ValueError naming the problem when this format cannot wrap `spec`."""
        if not self.local_chunks or any(c < 1 for c in self.local_chunks):
            raise ValueError(f"tnt.local_chunks must list one chunk size >= 1 per local memory, got "
                             f"{list(self.local_chunks)}")
        if self.shard < 0 or (self.shard and any(self.shard % c for c in self.local_chunks)):
            raise ValueError(f"tnt.shard={self.shard} must be 0 (no resets) or a multiple of every local chunk "
                             f"size {list(self.local_chunks)} (each shard restarts the locals' chunk grids)")
        if self.qk_range not in QK_RANGES:
            raise ValueError(f"tnt.qk_range={self.qk_range!r}; allowed: {', '.join(QK_RANGES)}")
        if self.qk_scale not in SCALES:
            raise ValueError(f"tnt.qk_scale={self.qk_scale!r}; allowed: {', '.join(SCALES)}")
        if self.combine not in COMBINES:
            raise ValueError(f"tnt.combine={self.combine!r}; allowed: {', '.join(COMBINES)}")
        if spec.semantics != "anchored" or not engine.dual_form(spec):
            raise ValueError(f"TNT takes each chunk's gradients at its start (TNT Eq. 5-6): the wrapped memory needs "
                             f"semantics=anchored and a chunk-parallel form; got semantics={spec.semantics!r}, "
                             f"learner={spec.learner!r}, retention={spec.retention!r}")

    def grid(self, chunk_size: int) -> int:
        """The grid packed documents must start on: every memory's chunk grid and the shards
        (the lcm of C_G when the global memory is on, S_L, and the local chunk sizes)."""
        sizes = list(self.local_chunks) + ([chunk_size] if self.global_memory else []) + (
            [self.shard] if self.shard else [])
        return math.lcm(*sizes)


@struct.dataclass
class TNTState:
    """global_memory: MemState (leaves [B, H, ...]) or None; locals: one MemState per local memory;
    qk: [B, H, dk, dk] the projection P and keys: [B, H] its number of keys; position: [B] tokens
    since the start (the shard grid); conv_tail: [B, K-1, channels]."""

    global_memory: MemState | None
    locals: tuple
    qk: jax.Array
    keys: jax.Array
    position: jax.Array
    conv_tail: jax.Array


def _read_at_anchor(spec: MemorySpec) -> engine.ChunkHooks:
    """scan_chunks hooks whose output is every token's read at its chunk's START weights
    (TNT Eq. 7's global read), not the engine's read after the write, which is never computed
    (`reads=False`: the chunk step keeps O(C_G |W|) work, no C_G x C_G read terms)."""

    def prologue(anchor, carry, x, here, reset):
        reads = jax.vmap(lambda w, q: engine.read(spec, w, q), in_axes=(None, 0))
        y = jax.vmap(jax.vmap(reads))(anchor, x[0].astype(jnp.float32))  # [B, H, C, dv]
        return x, carry, y

    return engine.ChunkHooks(prologue=prologue, epilogue=lambda y, aux, carry, done: (aux, carry), reads=False)


def _fresh_shards(memory: AssociativeMemory, q, k, v, g, segment_ids, shard: int):
    """A fresh sequence through a local memory with a restart every `shard` tokens: the whole
    shards as one batch of [B * n] rows, then the remainder. Returns (state after the last token, y)."""
    b, h, t = q.shape[:3]
    n = t // shard if shard else 0
    full = n * shard
    outs = []
    if n:
        fold = lambda x: jnp.swapaxes(x[:, :, :full].reshape((b, h, n, shard) + x.shape[3:]), 1, 2).reshape(  # noqa: E731
            (b * n, h, shard) + x.shape[3:])
        seg = None if segment_ids is None else segment_ids[:, :full].reshape(b * n, shard)
        final, y = memory.run(None, fold(q), fold(k), fold(v), jax.tree.map(fold, g), seg)
        outs.append(jnp.swapaxes(y.reshape((b, n, h, shard) + y.shape[3:]), 1, 2).reshape((b, h, full) + y.shape[3:]))
        final = jax.tree.map(lambda a: a.reshape((b, n) + a.shape[1:])[:, -1], final)
    if full < t:
        rest = lambda x: x[:, :, full:]  # noqa: E731
        final, y = memory.run(None, rest(q), rest(k), rest(v), jax.tree.map(rest, g),
                              None if segment_ids is None else segment_ids[:, full:])
        outs.append(y)
    return final, jnp.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]


class TNTMixer(MemoryMixer):
    """`mixer(x: [batch, seq, d_model], *, state=None, segment_ids=None) -> (y, state)`, the
    MemoryMixer's contract: a returned state continues the sequence (decoding reads with the
    configured `local_chunks`: Stage 2's when the config is Stage 2's). Packed documents start on
    `tnt.grid(memory.chunk_size)`. Parameters: the global memory's at the mixer's top level (the
    paths of a plain memory mixer's), the locals' under `local_memories/<n>/`."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, cfg: MemoryConfig, tnt: TNTFormat, *,
                 std: float = 0.02, out_std: float = 0.02, dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        spec = MemorySpec.of(cfg)
        tnt.check(spec)
        self.tnt = tnt
        self._init_inputs(d_model, num_heads, head_dim, cfg, std=std, dtype=dtype, rngs=rngs)
        self.remat = remat
        if tnt.global_memory:
            self._init_memory(d_model, num_heads, self.key_dim, head_dim, spec, cfg, std=std, rngs=rngs)
        self.local_memories = nnx.List([
            AssociativeMemory(d_model, num_heads, self.key_dim, head_dim, dataclasses.replace(spec, chunk_size=c), cfg,
                              std=std, rngs=rngs)
            for c in tnt.local_chunks])
        self._init_output(d_model, num_heads, head_dim, cfg, std=std, out_std=out_std, dtype=dtype, rngs=rngs)

    def memories(self) -> list[AssociativeMemory]:
        return ([self] if self.tnt.global_memory else []) + list(self.local_memories)

    def init_state_for(self, batch_size: int) -> TNTState:
        h, d = self.num_heads, self.key_dim
        return TNTState(global_memory=self.fresh_state(batch_size) if self.tnt.global_memory else None,
                        locals=tuple(m.fresh_state(batch_size) for m in self.local_memories),
                        qk=jnp.zeros((batch_size, h, d, d), jnp.float32), keys=jnp.zeros((batch_size, h), jnp.float32),
                        position=jnp.zeros((batch_size,), jnp.int32), conv_tail=self.conv.init_tail(batch_size))

    def __call__(self, x: jax.Array, *, state: TNTState | None = None,
                 segment_ids: jax.Array | None = None) -> tuple[jax.Array, TNTState]:
        return run_mixer(self, x, state, segment_ids)

    def _mix(self, x, state, segment_ids):
        b, t, _ = x.shape
        q, k, v, tail = self.queries_keys_values(
            x, segment_ids=segment_ids, conv_tail=None if state is None else state.conv_tail)
        start = jnp.zeros((b,), jnp.int32) if state is None else state.position
        positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T]
        fresh = self.init_state_for(b)
        y, global_memory = 0.0, None
        if self.tnt.global_memory:
            global_memory, y = self._global(None if state is None else state.global_memory, fresh.global_memory,
                                            q, k, v, self.gates(x), segment_ids)
        q_local, qk, keys = self._project(q, k, positions, fresh if state is None else state, segment_ids)
        local_states, weight = [], 1.0 / len(self.local_memories) if self.tnt.combine == "mean" else 1.0
        for i, memory in enumerate(self.local_memories):
            st, y_local = self._local(memory, None if state is None else state.locals[i], fresh.locals[i],
                                      q_local, k, v, memory.gates(x), positions, segment_ids)
            y, local_states = y + weight * y_local, local_states + [st]
        new = TNTState(global_memory=global_memory, locals=tuple(local_states), qk=qk, keys=keys,
                       position=start + t, conv_tail=tail)
        return self.output(x, y), new

    def _global(self, state, fresh, q, k, v, g, segment_ids):
        """The global memory: every read at its chunk's start state, anchored writes on the C_G grid."""
        spec = self.spec
        if state is not None and q.shape[2] == 1:  # decoding: read at the anchor, then write
            read = lambda w, qt: engine.read(spec, w, qt[0])[None]  # noqa: E731
            y = jax.vmap(jax.vmap(read))(state.anchor, q.astype(jnp.float32))
            return decode_heads(spec, state, q, k, v, g)[0], y
        final, _, y = engine.scan_chunks(spec, state, fresh, (), (q, k, v, g), _read_at_anchor(spec), axis=2,
                                         segment_ids=segment_ids)
        if segment_ids is not None:  # trailing padding holds the fresh state (as in engine.chunk_heads)
            final = where_leading(segment_ids[:, -1] > 0, final, fresh.replace(pos=final.pos))
        return final, y

    def _project(self, q, k, positions, state, segment_ids):
        """P_t q_t (zoo.memory.qk_projection) with P restarting at documents and at the start of
        each `qk_range`; `qk_range: off` reads q itself. Returns (queries, P, its key count)."""
        tnt = self.tnt
        if tnt.qk_range == "off":
            return q, state.qk, state.keys
        if segment_ids is None:
            valid, resets = jnp.ones(positions.shape, bool), jnp.zeros(positions.shape, bool)
        else:  # documents and padding restart P; padding adds no key
            valid = segment_ids > 0
            resets = (segment_ids != jnp.concatenate([segment_ids[:, :1], segment_ids[:, :-1]], axis=1)) | ~valid
        if tnt.qk_range == "shard" and tnt.shard:
            resets = resets | (positions % tnt.shard == 0)
        if tnt.qk_range == "chunk":
            resets = resets | (positions % tnt.local_chunks[0] == 0)
        return project_queries(q, k, resets, valid, state.qk, state.keys, scale=tnt.qk_scale)

    def _local(self, memory, state, fresh, q, k, v, g, positions, segment_ids):
        """One local memory: a fresh sequence runs shard-parallel; a continued one restarts at
        W_init where a shard starts (before its first token too)."""
        shard = self.tnt.shard
        if state is None:
            return _fresh_shards(memory, q, k, v, g, segment_ids, shard)
        if not shard:
            return memory.run(state, q, k, v, g)
        state = where_leading(positions[:, 0] % shard == 0, fresh, state)
        ids = None if q.shape[2] == 1 else positions // shard - positions[:, :1] // shard + 1  # [B, T]: shards from 1
        return memory.run(state, q, k, v, g, ids)

"""Titans MAC: Memory as Context (Behrouz et al. 2025, arXiv:2501.00663 §4.1, Eq. 21-25, Fig. 2).

The sequence is cut into segments of C = `memory.chunk_size` tokens on the grid of absolute
positions (multiples of C from the sequence or document start); the memory's chunk is the segment,
so its anchor is the segment start. Per block, with h = Norm(x) and segment s (Eq. numbers of the
paper, causality fixes (i), (ii) of the spec §2.4):

    Eq. 21   r_i = M*(q_i; W_a)              retrieval at the segment-start state W_a (no update),
                                            q_i from the mixer's query path on h (W_Q, conv, SiLU, L2)
    Eq. 22   S~ = [P || r || h_s]            persistent slots, retrieved tokens, segment tokens
    Eq. 23   y_s = Attn(S~)                  query i sees P, r_j and h_j for j <= i only (fix (i));
                                            nothing of other segments: the memory carries the context
    Eq. 24   M_s = M_{s-1}(y_s)              write y_s (the mixer's full path: q, k, v, gates from y);
                                            `model.mac_write: input` (the default) writes h_s instead
    Eq. 25   o_i = y_i (x) M*_{<=i}(y_i)     read after writing y_{<=i} (fix (ii), the dual form with
                                            memory chunk = segment; with `input`, the read of h_i
                                            after writing h_{<=i}), gated as in MAG:
                                            o = RMSNorm_a(y) * sigmoid(RMSNorm_b(mem_out))
    x <- x + o,  x <- x + SwiGLU(Norm(x)).

What the memory writes (`model.mac_write`, docs/fidelity.md "MAC"): "input", the default, makes it
Titans' LMM over the block's normed input h (q, k, v, gates, the per-position read and its output
gate all from h), so a segment's retrieval queries and the earlier segments' keys come from the
same token stream; y only gates its read (Eq. 25). "attention" is Eq. 24 as printed: the memory
writes and reads y_n. Measured on MQAR (mqar_tiny, 800 steps, 3 seeds): 0.997 median with
"input", 0.129 with "attention".

Choices where the paper is silent (see `MACBlock`):
* The retrieved vectors r are mapped to d_model with the mixer's own output path (per-head RMSNorm,
  SiLU gate from h, W_O: the same path as the memory's other read) and then RMSNorm-ed, so
  attention sees them on the scale of its other (normed) inputs.
* y enters through RMSNorm_a (y_n = RMSNorm_a(y)): y_n is the gated side of Eq. 25,
  o = y_n * sigmoid(RMSNorm_b(mixer_out(s))), s = h ("input") or y_n ("attention"), and with
  "attention" also what the memory writes.
* One memory mixer (one W_Q, conv kernel, W_O, W_0) serves both reads, as the paper has one memory
  M; its short conv runs over two streams (Norm x for retrieval queries, the written stream, h or
  y_n, for writes), each with its own carried tail. The tails stream across segment boundaries (reset at document starts), so
  the K-1 tokens before a segment reach it through the conv as well as through the memory.
* Rotary positions are in-segment positions 0..C-1, the retrieved token r_j at the same position
  as its token h_j (attention is segment-local and RoPE relative, so absolute positions would give
  the same scores).
* `model.attn_conv_width = K > 0` puts the causal short conv of the Transformer++ baseline
  (Zoology's "BASED recipe") on the segment tokens' attention input; its tail streams across
  segments and resets at document starts. The retrieved tokens do not pass through it.
* The initial memory W_0 is read before any write (the first segment's retrieval), so its last
  layer starts at N(0, 0.02^2) (`memory.last_layer_std`, registered for this model), not at zero:
  a zero read meets two RMSNorms at gain 1/sqrt(eps).
* `model.sliding_window = W > 0` further limits a query to the last W positions of its segment
  (both the retrieved and the segment block); 0 = the whole causal segment (the paper).

The segment loop is the engine's chunk loop with this block's prologue and epilogue
(`engine.scan_chunks`: checkpointed segments in checkpointed groups);
`extend` runs the same segment step over a piece placed at its in-segment offset (any length,
starting mid-segment), and a one-token step for decoding that costs O(C) attention plus one memory token, independent of the context length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from kernels.common import where_leading
from zoo.config import ModelConfig
from zoo.layers import apply_rotary, attend_at
from zoo.memory import engine
from zoo.memory.engine import Gates
from zoo.memory.state import MemState
from zoo.models.lm import LanguageModel
from zoo.models.memory_block import Block, mixer_from_config
from zoo.models.titans import PAPER
from zoo.models.transformer import attention_from_config, mlp_from_config
from zoo.registry import register


@struct.dataclass
class MACCache:
    """The state one MAC block carries between `extend` calls (size O(C), not O(context)).

    memory: MemState with leading axes [batch, heads]; its anchor is the state at the current
        segment's start (where retrievals read and inner gradients are taken).
    retrieve_tail: [batch, K-1, 3 * heads * head_dim] conv tail of the retrieval query path (Norm x).
    write_tail: [batch, K-1, 3 * heads * head_dim] conv tail of the write path at the segment start
        (`mac_write: attention`; with `input` the retrieval path's conv is the write's, and this
        stays at its initial value).
    written: [batch, C, d_model] the write-path inputs y_n of the current segment's tokens so far
        (`attention` only, like write_tail).
    k_mem, v_mem / k_seg, v_seg: [batch, C, kv_heads, head_dim] attention keys/values of the
        segment's retrieved tokens / segment tokens so far (slot = in-segment position).
    pos: [] int32, tokens of the current segment already seen (0 .. C-1).
    attn_tail: [batch, K-1, d_model] conv tail of the attention input (None without
        model.attn_conv_width).
    """

    memory: MemState
    retrieve_tail: jax.Array
    write_tail: jax.Array
    written: jax.Array
    k_mem: jax.Array
    v_mem: jax.Array
    k_seg: jax.Array
    v_seg: jax.Array
    pos: jax.Array
    attn_tail: jax.Array | None = None


def _read(spec, weights, q):
    """M(q; W) per [batch, head] without update (Eq. 15/21): weights [B, H, ...], q [B, H, T, dk]."""
    per_position = jax.vmap(lambda w, qt: engine.read(spec, w, qt), in_axes=(None, 0))
    return jax.vmap(jax.vmap(per_position))(weights, q)


class MACBlock(Block):
    """One Titans MAC layer: segment-local attention over [persistent || retrieved || segment],
    a memory written with the attention output, the MAG-style output gate, then the MLP."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.segment = cfg.memory.chunk_size
        self.write_input = cfg.mac_write == "input"
        self.window = cfg.sliding_window
        self.d_model = cfg.d_model
        self.in_norm = self.norm(cfg)
        self.mixer = mixer_from_config(cfg, rngs)
        if not engine.dual_form(self.mixer.spec):
            raise ValueError("titans_mac needs a chunk-parallel memory (semantics=anchored, or exact with "
                             "objective=dot): each segment is one memory chunk")
        self.retrieved_norm = self.norm(cfg)
        self.attn = attention_from_config(cfg, rngs, persistent=cfg.persistent_tokens)
        self.attn_out_norm, self.mem_out_norm = self.norm(cfg), self.norm(cfg)
        self.mlp_norm, self.mlp = self.norm(cfg), mlp_from_config(cfg, rngs)

    # -- cache -----------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_len: int = 0) -> MACCache:
        """Independent of max_len: the memory carries everything before the current segment."""
        state = self.mixer.init_state_for(batch_size)
        a, c = self.attn, self.segment
        kv = jnp.zeros((batch_size, c, a.num_kv_heads, a.head_dim), a.dtype)
        return MACCache(memory=state.memory, retrieve_tail=state.conv_tail, write_tail=state.conv_tail,
                        written=jnp.zeros((batch_size, c, self.d_model), self.in_norm.dtype),
                        k_mem=kv, v_mem=kv, k_seg=kv, v_seg=kv, pos=jnp.zeros((), jnp.int32),
                        attn_tail=None if a.conv is None else a.conv.init_tail(batch_size))

    # -- pieces ----------------------------------------------------------------------------------

    def _rotary(self, x, positions):
        return apply_rotary(x, positions, self.attn.rope_theta)

    def _attention_input(self, h, segment_ids, tail):
        """The segment tokens' attention input: h, or its causal short conv (model.attn_conv_width,
        the Zoology / BASED short conv; it streams across segment boundaries and resets at document
        starts). Returns (input [B, L, d], the new tail or None)."""
        if self.attn.conv is None:
            return h, None
        return self.attn.conv(h, segment_ids=segment_ids, tail=tail)

    def _retrieve(self, h, q_ret, anchor, positions):
        """Eq. 21: retrieved tokens at the anchor, as attention keys/values. h: [B, L, d],
        q_ret: [B, H, L, dh] (the mixer's query path on h), positions: [L] in-segment."""
        r = _read(self.mixer.spec, anchor, q_ret)
        r = self.retrieved_norm(self.mixer.output(h, r))
        return self._rotary(self.attn.k(r), positions), self.attn.v(r)

    def _attend(self, q, k_mem, v_mem, k_seg, v_seg, q_pos, k_pos, segments=None):
        """Eq. 22-23: queries q [B, Lq, Hq, d] at in-segment positions `q_pos [Lq]` over
        [P || retrieved || segment], both blocks at positions `k_pos [C]`: in-segment causal (fix (i)),
        windowed when model.sliding_window > 0, and within one document (`segments`: the queries' and
        the keys' ids, [B, Lq] and [B, C])."""
        keys = jnp.concatenate([k_mem, k_seg], axis=1).astype(q.dtype)
        values = jnp.concatenate([v_mem, v_seg], axis=1).astype(q.dtype)
        q_seg, k_seg_ids = (None, None) if segments is None else segments
        out = attend_at(q, keys, values, q_pos=q_pos, k_pos=jnp.concatenate([k_pos, k_pos]), q_segment=q_seg,
                        k_segment=None if k_seg_ids is None else jnp.concatenate([k_seg_ids, k_seg_ids], axis=1),
                        window=self.window, persistent=self.attn.persistent_slots())
        return self.attn.o(out)

    def _gate(self, y_n, mem_out):
        """Eq. 25 with the MAG gate: RMSNorm_a(y) * sigmoid(RMSNorm_b(M(y)))."""
        gate = jax.nn.sigmoid(self.mem_out_norm(mem_out).astype(jnp.float32))
        return y_n.astype(jnp.float32) * gate

    def _write_window(self, seg_tail, written, r):
        """The K-1 pre-conv write-path inputs before in-segment slot r: from `written` (projected
        here) inside the segment, from the segment-start tail before it."""
        k1 = seg_tail.shape[1]
        if k1 == 0:
            return seg_tail
        idx = r - k1 + jnp.arange(k1)
        recent = jnp.take(written, jnp.clip(idx, 0, self.segment - 1), axis=1)
        # The conv tail of a (K-1)-token call is exactly the projections of those K-1 tokens.
        _, _, _, projected = self.mixer.queries_keys_values(recent, conv_tail=seg_tail)
        before = jnp.take(seg_tail, jnp.clip(idx + k1, 0, k1 - 1), axis=1)
        return jnp.where((idx < 0)[None, :, None], before, projected.astype(seg_tail.dtype))

    # -- segment-parallel path (forward, prefill, streaming) -----------------------------------

    def _segments(self, h, cache: MACCache, offset, segment_ids):
        """Runs `h: [B, T, d]` (starting at in-segment position `offset`) segment by segment on the
        engine's chunk loop (`engine.scan_chunks`: the segment is the memory's chunk). This block
        supplies the prologue (Eq. 21-24's retrieve, attend and write path) and the epilogue (Eq. 25's
        gate); slots of the current segment that came in earlier calls are filled from the cache."""
        m, attn, spec = self.mixer, self.attn, self.mixer.spec
        forward = isinstance(offset, int)  # a fresh sequence (static offset 0) or a continued one
        # Everything that depends only on h, for the whole piece at once; with mac_write=input this
        # includes the writes themselves (the memory's q, k, v and gates of the token stream).
        q_ret, k_in, v_in, retrieve_tail = m.queries_keys_values(
            h, segment_ids=segment_ids, conv_tail=None if forward else cache.retrieve_tail)
        tokens_first = lambda a: jnp.moveaxis(a, 2, 1)  # noqa: E731  [B, H, T, ...] -> [B, T, H, ...]
        writes = jax.tree.map(tokens_first, (k_in, v_in, m.gates(h))) if self.write_input else None
        pos = (offset + jnp.arange(h.shape[1])) % self.segment
        h_attn, attn_tail = self._attention_input(h, segment_ids, None if forward else cache.attn_tail)
        q = self._rotary(attn.q(h_attn), pos)
        k_seg, v_seg = self._rotary(attn.k(h_attn), pos), attn.v(h_attn)
        seg = None if segment_ids is None else segment_ids.astype(jnp.int32)
        xs = (h, tokens_first(q_ret), q, k_seg, v_seg, seg, writes)  # all [B, T, ...]
        fresh = self.init_cache(h.shape[0])
        hooks = engine.ChunkHooks(prologue=functools.partial(self._prologue, fresh.write_tail), epilogue=self._epilogue)
        memory, st, out = engine.scan_chunks(spec, None if forward else cache.memory, fresh.memory,
                                             cache.replace(memory=None), xs, hooks, axis=1, segment_ids=segment_ids)
        new_pos = jnp.asarray((offset + h.shape[1]) % self.segment, jnp.int32)
        return out, st.replace(memory=memory, retrieve_tail=retrieve_tail.astype(st.retrieve_tail.dtype),
                               pos=new_pos, attn_tail=attn_tail)

    def _prologue(self, fresh_write_tail, anchor, st: MACCache, x, here, reset):
        """Eq. 21-23 for one segment, then the write path of Eq. 24: retrieve at the anchor, attend
        within the segment, write the segment's tokens h (`model.mac_write: input`: the retrieval path's
        k, v and h's gates, computed for the whole piece) or y_n (`attention`: its own q, k, v and
        gates, the write conv carried across calls in `written`). x: the segment's h, retrieval
        queries, attention q/k/v, segment ids (None without documents) and the input writes (None
        with `attention`), each [B, C, ...]; here [C]: this call's tokens; reset [B]: document starts
        (which also reset the write conv; the retrieval conv already respects segment_ids)."""
        m, slots = self.mixer, jnp.arange(self.segment)
        h_s, q_ret_s, q_s, k_s, v_s, seg_s, writes = x
        write_tail = where_leading(reset, fresh_write_tail, st.write_tail)
        k_mem, v_mem = self._retrieve(h_s, jnp.moveaxis(q_ret_s, 2, 1), anchor, slots)
        slot = here[None]  # [1, C]: this call's tokens, the rest from the cache
        k_mem, v_mem = where_leading(slot, k_mem, st.k_mem), where_leading(slot, v_mem, st.v_mem)
        k_s, v_s = where_leading(slot, k_s, st.k_seg), where_leading(slot, v_s, st.v_seg)
        y = self._attend(q_s, k_mem, v_mem, k_s, v_s, slots, slots, None if seg_s is None else (seg_s, seg_s))
        y_n = self.attn_out_norm(y)
        st = st.replace(k_mem=k_mem, v_mem=v_mem, k_seg=k_s, v_seg=v_s)
        if self.write_input:
            km, vm, gates = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 2), writes)  # back to [B, H, C, ...]
            return (jnp.moveaxis(q_ret_s, 2, 1), km, vm, gates), st, (y_n, h_s, st.write_tail)
        written = where_leading(slot, y_n, st.written)
        qm, km, vm, tail = m.queries_keys_values(written, conv_tail=write_tail)
        st = st.replace(write_tail=write_tail, written=written)
        return (qm, km, vm, m.gates(written)), st, (y_n, written, tail)

    def _epilogue(self, mem_y, aux, st: MACCache, done):
        """Eq. 25 for one segment; a complete segment's write conv tail starts the next one."""
        y_n, written, tail = aux
        o = self._gate(y_n, self.mixer.output(written, mem_y))
        return o, st.replace(write_tail=jnp.where(done, tail.astype(st.write_tail.dtype), st.write_tail))

    # -- one-token path (decoding) ------------------------------------------------------------

    def _token(self, h, cache: MACCache):
        """One token `h: [B, 1, d]` at in-segment position cache.pos: O(C) attention, one
        memory step (engine.decode_step: gradient at the anchor, anchor refresh at segment end)."""
        m, attn, c, spec = self.mixer, self.attn, self.segment, self.mixer.spec
        r = cache.pos
        pos = r[None]
        q_ret, k_in, v_in, retrieve_tail = m.queries_keys_values(h, conv_tail=cache.retrieve_tail)
        k_mem, v_mem = self._retrieve(h, q_ret, cache.memory.anchor, pos)

        def put(buf, x):
            return jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), r, axis=1)

        k_mem, v_mem = put(cache.k_mem, k_mem), put(cache.v_mem, v_mem)
        h_attn, attn_tail = self._attention_input(h, None, cache.attn_tail)
        k_seg, v_seg = put(cache.k_seg, self._rotary(attn.k(h_attn), pos)), put(cache.v_seg, attn.v(h_attn))
        y = self._attend(self._rotary(attn.q(h_attn), pos), k_mem, v_mem, k_seg, v_seg, pos, jnp.arange(c))
        y_n = self.attn_out_norm(y)
        if self.write_input:  # the retrieval path's q, k, v are the writes
            source, written, tail = h, cache.written, cache.write_tail
            qm, km, vm = q_ret, k_in, v_in
        else:
            source, written = y_n, put(cache.written, y_n)
            window = self._write_window(cache.write_tail, written, r)
            qm, km, vm, tail = m.queries_keys_values(y_n, conv_tail=window)
        gates = m.gates(source)

        def one(st, qt, kt, vt, gt: Gates):
            return engine.decode_step(spec, st, qt[0], kt[0], vt[0], engine.gates_at(gt, 0))

        memory, mem_y = jax.vmap(jax.vmap(one))(cache.memory, qm, km, vm, gates)
        o = self._gate(y_n, m.output(source, mem_y[:, :, None]))
        done = r == c - 1
        return o, MACCache(memory=memory, retrieve_tail=retrieve_tail.astype(cache.retrieve_tail.dtype),
                           write_tail=jnp.where(done, tail.astype(cache.write_tail.dtype), cache.write_tail),
                           written=written, k_mem=k_mem, v_mem=v_mem, k_seg=k_seg, v_seg=v_seg,
                           pos=(r + 1) % c, attn_tail=attn_tail)

    # -- the block ------------------------------------------------------------------------------

    def mix(self, x, cache, segment_ids):
        h = self.in_norm(x)
        if cache is None:
            o, _ = self._segments(h, self.init_cache(x.shape[0]), 0, segment_ids)
        elif x.shape[1] == 1:
            o, cache = self._token(h, cache)
        else:
            o, cache = self._segments(h, cache, cache.pos, None)
        return x + o.astype(x.dtype), cache


# MAC's first segment reads W_0 before any write; an all-zero read would meet the RMSNorms of the
# retrieval path at infinite gain (grad norm 8560 at init on mqar_tiny vs 6.8; docs/fidelity.md).
MAC_MEMORY = dict(last_layer_std=0.02)


@register("titans_mac", family="Titans", paper=PAPER, tiny_config="configs/titans/mac_tiny.yaml",
          uses_memory=True, memory_defaults=MAC_MEMORY)
def build_titans_mac(cfg: ModelConfig, rngs: nnx.Rngs) -> LanguageModel:
    return LanguageModel(cfg, lambda i, r: MACBlock(cfg, r), rngs=rngs)

"""Analytic training FLOPs per token of any registered model, and the model FLOPs utilisation.

    flops_per_token(model, seq_len)      # model: a built (or nnx.eval_shape-d) LanguageModel
    mfu(flops_per_token, tokens_per_s, devices, peak)

Counted as 3 x the forward pass (the backward costs two forwards), 2 FLOPs per multiply-add:
* every weight matrix a token passes through: 2 FLOPs per weight, the LM head included and the
  embedding lookup not (with tied embeddings the table is counted once, as the head); the learned
  initial memory states are not weights a token multiplies;
* attention: QK^T and AV, 4 * heads * head_dim FLOPs per attended key, averaged over the
  positions of a causal sequence of `seq_len` (a window W attends min(t + 1, W) keys; persistent
  slots are attended by every position; MAC attends its segment's retrieved and own tokens);
* memory mixers, per head (d_k = d_v = head_dim, chunk C, MLP hidden h = expansion * d_k):
  matrix memory: the read and the write (2 * 2 d_k d_v) and the chunk's intra-chunk scores and
  values (2 * C * (d_k + d_v)); MLP memory of depth 2: the forward at the anchor, the backward for
  the inner gradient and the weight-gradient outer products (3 * 2 * 2 d_k h), the read with the
  updated weights (2 * 2 d_k h) and the intra-chunk terms (2 * C * (d_k + h)). MAC reads its
  memory twice (retrieval and output). Trellis: two m x d memories, each with its code at the
  anchor, its write and its read (3 * 2 m d) and the intra-chunk terms (2 * C * (d + m)).
Not counted: norms, gates' elementwise work, convolutions, softmax. Recomputation (`model.remat`)
is not counted either: this is model FLOPs, not hardware FLOPs.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

# Dense bf16 peak FLOP/s per device (vendor figures); `train.peak_flops` overrides.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def device_peak_flops(device=None) -> float | None:
    """The table's peak for `device` (default: the first device), None when unknown (CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)


def _causal_keys(seq_len: int, window: int = 0) -> float:
    """Average number of keys a position of a causal sequence attends (window W > 0: at most W)."""
    if not window or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def _attention(attn, keys: float) -> float:
    slots = 0 if attn.persistent_k is None else attn.persistent_k.shape[-3]
    return 4 * attn.num_heads * attn.head_dim * (keys + slots)


def _memory(spec, heads: int, d: int) -> float:
    c = spec.chunk_size if spec.semantics == "anchored" else spec.kernel_chunk
    if spec.num_layers == 1:
        per_head = 2 * 2 * d * d + 2 * c * (d + d)
    else:
        h = spec.expansion * d
        layers = max(spec.depth, 1)
        weights = d * h + (layers - 2) * h * h + h * d if layers > 1 else d * d
        per_head = 3 * 2 * weights + 2 * weights + 2 * c * (d + h)
    return heads * per_head


def _trellis(mixer) -> float:
    d, m, c = mixer.head_dim, mixer.slots, mixer.spec.chunk_size
    return mixer.num_heads * 2 * (3 * 2 * m * d + 2 * c * (d + m))


def _self_modifying(mixer) -> float:
    """Hope's mixer, per token: for each of the five memories two MLP forwards (the input and the
    self-generated target), its gradient and the two rank-one transitions, ~20 d e; W_O etc. are
    parameters (counted as matmuls)."""
    d = mixer.head_dim
    return mixer.num_heads * 5 * 20 * d * mixer.fmt.expansion * d


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of `model` on sequences of `seq_len`."""
    from zoo.layers.attention import Attention
    from zoo.memory.layer import MemoryMixer
    from zoo.memory.self_modifying import SelfModifyingTitans
    from zoo.memory.trellis_layer import TrellisMixer

    params = nnx.state(model, nnx.Param)
    matmul = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if leaf.ndim >= 2 and not {"init_state", "init_key", "init_value"} & set(names):
            matmul += math.prod(leaf.shape)
    mixing = 0.0
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Attention):
            block = _parent(model, path)
            segment = getattr(block, "segment", 0)
            keys = (segment + 1) if segment else _causal_keys(seq_len, node.sliding_window)
            mixing += _attention(node, keys)
        elif isinstance(node, MemoryMixer):
            block = _parent(model, path)
            per_token = sum(_memory(m.spec, node.num_heads, node.head_dim) for m in node.memories())
            mixing += per_token * (2 if getattr(block, "segment", 0) else 1)
        elif isinstance(node, TrellisMixer):
            mixing += _trellis(node)
        elif isinstance(node, SelfModifyingTitans):
            mixing += _self_modifying(node)
    return 3 * (2 * matmul + mixing)


def _parent(model, path):
    node = model
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def mfu(flops_per_token: float, tokens_per_s: float, devices: int, peak_per_device: float | None) -> float | None:
    """Achieved model FLOP/s over the peak of all devices; None without a known peak."""
    if not peak_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * devices)

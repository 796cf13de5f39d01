"""The Pallas kernels lower for the accelerators, checked on this CPU machine: `jax.export` traces
each op's forward and backward kernels for CUDA (Pallas Triton) and TPU (Mosaic) under
`kernels.pallas_chunks.lowering_target`, which is where an unsupported primitive (a cumsum, a
static slice, an erf, a matrix-vector dot) fails: the memory ops and PolySketch attention. Compiling the emitted Triton or Mosaic IR and
running it needs the device (`scripts/bench_kernels.py --device-run`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels.pallas_chunks import lowering_target

B, T, H, D, CHUNK, SKETCH = 1, 100, 1, 128, 64, 16  # a chunk and a ragged tail; documents start at 40 (inside a chunk) and 64;
# D = 128: on GPU the delta rules split the value columns across two programs (VALUE_BLOCKS)


def _loss(op: str):
    segment_ids = jnp.asarray(np.repeat([[1] * 40 + [2] * 24 + [3] * 36], B, 0), jnp.int32)

    def loss(q, k, v, a, b, c):
        if op == "gated_delta_rule":
            o, s = kernels.gated_delta_rule(q, k, v, a, b, backend="pallas", chunk_size=CHUNK, segment_ids=segment_ids,
                                            output_final_state=True)
            return o.sum() + s.sum()
        if op == "momentum_delta_rule":
            o, (w, s) = kernels.momentum_delta_rule(q, k, v, a, b, c, backend="pallas", chunk_size=CHUNK,
                                                    segment_ids=segment_ids, output_final_state=True)
            return o.sum() + w.sum() + s.sum()
        weights = (jnp.full((B, H, D, 32), 0.1), jnp.full((B, H, 32, D), 0.1))
        o, (w, s) = kernels.anchored_memory(q, k, v, a, b, c, initial_weights=weights, backend="pallas",
                                            chunk_size=CHUNK, segment_ids=jnp.where(segment_ids == 2, 3, segment_ids),
                                            max_grad_norm=1.0, output_final_state=True)
        return o.sum() + sum(x.sum() for x in w + s)

    return loss


def _polysketch_loss(local: bool):
    """PolySketch attention with r = 16 (256 features), exact local attention or none, documents."""
    segment_ids = jnp.asarray(np.repeat([[1] * 40 + [2] * 24 + [3] * 36], B, 0), jnp.int32)

    def loss(q, k, v, *_):  # the sketched features from q and k's first columns, local ones q and k
        o, (s, z) = kernels.polysketch_attention(q[..., :SKETCH], k[..., :SKETCH], v, local_q=q if local else None,
                                                 local_k=k if local else None, block_size=CHUNK,
                                                 segment_ids=segment_ids, output_final_state=True, backend="pallas")
        return o.sum() + s.sum() + z.sum()

    return loss


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
@pytest.mark.parametrize("op", list(kernels.MEMORY_OPS) + ["polysketch_attention", "polysketch_attention/sketched"])
def test_forward_and_backward_kernels_lower(op, platform):
    x = jax.ShapeDtypeStruct((B, T, H, D), jnp.float32)
    gate = jax.ShapeDtypeStruct((B, T, H), jnp.float32)
    loss = _polysketch_loss(not op.endswith("sketched")) if op.startswith("polysketch") else _loss(op)
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(6))))
    with lowering_target(platform):
        exported = jax.export.export(grad, platforms=["cuda" if platform == "gpu" else "tpu"], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(x, x, x, gate, gate, gate)
    text = exported.mlir_module()
    kernel_call = "__gpu$xla.gpu.triton" if platform == "gpu" else "tpu_custom_call"
    assert text.count(kernel_call) >= 2  # the forward and the backward kernel


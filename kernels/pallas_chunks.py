"""The Pallas backend's driver, shared by every chunked memory op: one `pallas_call` per direction
that runs an op's chunk step over the chunks of one (batch, head) per program.

An op supplies `step(carry, fresh, chunk, aux, end) -> (carry, y)`: one chunk of one (batch, head),
with `carry` / `fresh` pytrees of fp32 states (`fresh`: the states a document restarts from),
`chunk` a tuple of differentiable per-token inputs `[C, ...]` (any float dtype), `aux` a tuple of
non-differentiable per-token fp32 flags `[C]` (document starts, validity) and `end` (an int32
scalar) the chunk's count of real tokens: a ragged sequence is zero-padded to whole chunks (every
kernel sees `[C, d]` tiles; Triton needs power-of-two arrays), and a step returns the state after
row `end - 1` (its rows are causal, so the padding after it changes no real row); `y: [C, dv]` fp32.

    forward kernel, grid (batch, heads, value blocks): carry <- carry_0; for chunk i = 0..n-1:
        save carry as chunk i's start state; (carry, y_i) <- step(carry, fresh, chunk_i, aux_i, end_i)
    backward kernel, same grid: d_carry <- d_final; for i = n-1..0:
        recompute chunk i from its saved start state and pull (d_carry, dy_i) back through `step`
        (its VJP, traced inside the kernel): d_chunk_i, d_fresh += ..., d_carry <- d(start state)

The states stay fp32 in the kernel's carry; the saved chunk-start states `[batch, heads, n, ...]`
are the only residuals (everything inside a chunk is recomputed), and the pair is wrapped in
`jax.custom_vjp` (a bare `pallas_call` has no gradient). The chunk loop runs inside one program
(a `fori_loop` with dynamic chunk slices), the form GPUs need (their grid programs run in no
order); the grid axes are independent (value blocks: `ValueSplit`, one block unless an op splits
its value columns).

`interpret`: True runs the kernels as ordinary JAX (the only mode on CPU; forced on accelerators by
`MEMZOO_PALLAS_INTERPRET=1`, DESIGN §1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.common import ACCELERATORS

INTERPRET_FLAG = "MEMZOO_PALLAS_INTERPRET"
_TARGET: list[str] = []  # set by `lowering_target` (cross-platform lowering checks on CPU)


@contextlib.contextmanager
def lowering_target(platform: str):
    """Traces the kernels for `platform` ("gpu" or "tpu") whatever this process runs on: no
    interpret mode, that platform's compiler parameters (for `jax.export(..., platforms=[...])`
    checks that the kernels lower, on a machine without the accelerator)."""
    _TARGET.append(platform)
    try:
        yield
    finally:
        _TARGET.pop()


def target_platform() -> str:
    """The platform the kernels are traced for: `lowering_target`'s, else the default device's."""
    return _TARGET[-1] if _TARGET else jax.devices()[0].platform


def interpret_mode() -> bool:
    """True on CPU (Pallas runs only interpreted there) or when `MEMZOO_PALLAS_INTERPRET=1`."""
    return target_platform() not in ACCELERATORS or os.environ.get(INTERPRET_FLAG, "0") not in ("", "0")


def compiler_params(interpret: bool):
    """The target's compiler parameters: GPU lowers through Pallas Triton (the chunk step is general
    JAX: masked matmuls, exponentials, loops; Triton takes it as written), TPU through Mosaic with
    the (batch, head, value block) grid axes parallel; None when interpreted."""
    if interpret:
        return None
    if target_platform() == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=4, num_stages=1)
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))


@dataclasses.dataclass(frozen=True)
class ValueSplit:
    """How the value dimension is split across programs: `blocks` column blocks of every state,
    of `y` and of the inputs flagged in `xs` (one bool per input: its last axis is the value axis).
    Exact wherever the state's columns evolve independently (the delta rules: each column of S
    follows its own column of v); the unsplit inputs' gradients are summed over the blocks."""

    blocks: int = 1
    xs: tuple[bool, ...] = ()

    def spec(self, shape: tuple[int, ...], split: bool) -> pl.BlockSpec:
        """One (batch, head)'s slab of a `[batch, heads, ...]` array (batch and head squeezed), its
        last axis cut to the program's value block when `split`."""
        rest = tuple(shape[2:])
        if split and self.blocks > 1:
            return pl.BlockSpec((None, None) + rest[:-1] + (rest[-1] // self.blocks,),
                                lambda b, h, j: (b, h) + (0,) * (len(rest) - 1) + (j,))
        return pl.BlockSpec((None, None) + rest, lambda b, h, j: (b, h) + (0,) * len(rest))

    def partial_spec(self, shape: tuple[int, ...]) -> pl.BlockSpec:
        """A `[blocks, batch, heads, ...]` array of per-block partial sums, one block per program."""
        return pl.BlockSpec((None, None, None) + tuple(shape[3:]), lambda b, h, j: (j, b, h) + (0,) * (len(shape) - 3))


VALUE_BLOCK_FLAG = "MEMZOO_PALLAS_VALUE_BLOCK"
VALUE_BLOCKS = {"gpu": 64, "tpu": 128}  # value columns per program (not measured yet: a tuning knob)


def value_split(dv: int, split_xs: tuple[bool, ...], value_block: int | None = None) -> ValueSplit:
    """The value split of a delta-rule op: `value_block` columns per program (default
    `MEMZOO_PALLAS_VALUE_BLOCK`, else 64 on GPU: a Triton program then carries a [dk, 64] fp32
    state rather than [dk, dv]; 128 on TPU, a lane tile; interpreted: no split); one block when it
    does not divide dv."""
    if value_block is None:
        flag = os.environ.get(VALUE_BLOCK_FLAG, "").strip()
        if flag and not (flag.isdigit() and int(flag) > 0):
            raise ValueError(f"{VALUE_BLOCK_FLAG}={flag!r}: must be a positive int (value columns per Pallas "
                             "program, e.g. 64), or unset for the platform default")
        value_block = int(flag) if flag else (dv if interpret_mode() else VALUE_BLOCKS.get(target_platform(), dv))
    blocks = dv // value_block if 0 < value_block < dv and dv % value_block == 0 else 1
    return ValueSplit(blocks, split_xs)


def _head_major(x: jax.Array) -> jax.Array:
    """`[batch, seq, heads, ...] -> [batch, heads, seq, ...]` (a program's block is one head's sequence)."""
    return jnp.swapaxes(x, 1, 2)


def _rows(ref, start, size: int):
    """Rows [start, start + size) of a Ref's leading axis (any rank)."""
    return ref[(pl.ds(start, size),) + (slice(None),) * (len(ref.shape) - 1)]


def _set_rows(ref, start, value) -> None:
    ref[(pl.ds(start, value.shape[0]),) + (slice(None),) * (len(ref.shape) - 1)] = value.astype(ref.dtype)


def _take(refs: list, count: int) -> tuple[list, list]:
    return refs[:count], refs[count:]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _scan(steps: tuple[Callable, Callable], chunk_size: int, length: int, interpret: bool, split: ValueSplit,
          carry0, fresh, xs, aux):
    carry, ys, _ = _forward(steps[0], chunk_size, length, interpret, split, carry0, fresh, xs, aux)
    return carry, ys


def _end(i, chunk_size: int, length: int):
    """Chunk i's count of real tokens (the rest is padding): C, or less in the last chunk."""
    return jnp.minimum(chunk_size, length - i * chunk_size)


def _forward(step, chunk_size, length, interpret, split, carry0, fresh, xs, aux):
    """The forward kernel on head-major inputs padded to whole chunks (`length` real tokens);
    returns (final carry, ys, saved start carries)."""
    c = chunk_size
    batch, heads, seq = xs[0].shape[:3]
    n = seq // c
    carry_leaves, carry_tree = jax.tree.flatten(carry0)
    fresh_leaves, fresh_tree = jax.tree.flatten(fresh)
    y_shape = jax.eval_shape(lambda cr, f, x, a: step(cr, f, x, a, c)[1],
                             *jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[2:], x.dtype), (carry0, fresh)),
                             tuple(jax.ShapeDtypeStruct((c,) + x.shape[3:], x.dtype) for x in xs),
                             tuple(jax.ShapeDtypeStruct((c,), a.dtype) for a in aux))  # unsplit: y's full width
    ys_shape = jax.ShapeDtypeStruct((batch, heads, seq) + y_shape.shape[1:], jnp.float32)
    saved_shapes = [jax.ShapeDtypeStruct((batch, heads, n) + x.shape[2:], jnp.float32) for x in carry_leaves]

    def kernel(*refs):
        refs = list(refs)
        c_refs, refs = _take(refs, len(carry_leaves))
        f_refs, refs = _take(refs, len(fresh_leaves))
        x_refs, refs = _take(refs, len(xs))
        a_refs, refs = _take(refs, len(aux))
        y_ref, refs = refs[0], refs[1:]
        final_refs, saved_refs = _take(refs, len(carry_leaves))
        fresh_k = jax.tree.unflatten(fresh_tree, [r[...] for r in f_refs])

        def body(i, leaves):
            for leaf, ref in zip(leaves, saved_refs, strict=True):
                _set_rows(ref, i, leaf[None])
            carry, y = step(jax.tree.unflatten(carry_tree, leaves), fresh_k, tuple(_rows(r, i * c, c) for r in x_refs),
                            tuple(_rows(r, i * c, c) for r in a_refs), _end(i, c, length))
            _set_rows(y_ref, i * c, y)
            return [x.astype(jnp.float32) for x in jax.tree.leaves(carry)]

        leaves = lax.fori_loop(0, n, body, [r[...] for r in c_refs])
        for leaf, ref in zip(leaves, final_refs, strict=True):
            ref[...] = leaf

    inputs = [*carry_leaves, *fresh_leaves, *xs, *aux]
    splits = [True] * (len(carry_leaves) + len(fresh_leaves)) + list(split.xs or [False] * len(xs)) + [False] * len(aux)
    out_shapes = [ys_shape, *[jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in carry_leaves], *saved_shapes]
    outs = pl.pallas_call(kernel, out_shape=out_shapes, grid=(batch, heads, split.blocks),
                          in_specs=[split.spec(x.shape, cut) for x, cut in zip(inputs, splits, strict=True)],
                          out_specs=[split.spec(s.shape, True) for s in out_shapes],
                          interpret=interpret, compiler_params=compiler_params(interpret),
                          name="memzoo_chunks_fwd")(*inputs)
    ys, outs = outs[0], outs[1:]
    final, saved = _take(outs, len(carry_leaves))
    return jax.tree.unflatten(carry_tree, final), ys, saved


def _scan_fwd(steps, chunk_size, length, interpret, split, carry0, fresh, xs, aux):
    carry, ys, saved = _forward(steps[0], chunk_size, length, interpret, split, carry0, fresh, xs, aux)
    return (carry, ys), (fresh, xs, aux, saved)


def _scan_bwd(steps, chunk_size, length, interpret, split, residuals, cotangents):
    step = steps[1]
    fresh, xs, aux, saved = residuals
    d_final, d_ys = cotangents
    c = chunk_size
    batch, heads, seq = xs[0].shape[:3]
    n = seq // c
    fresh_leaves, fresh_tree = jax.tree.flatten(fresh)
    carry_tree = jax.tree.structure(d_final)
    d_final_leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(d_final)]

    def kernel(*refs):
        refs = list(refs)
        f_refs, refs = _take(refs, len(fresh_leaves))
        x_refs, refs = _take(refs, len(xs))
        a_refs, refs = _take(refs, len(aux))
        s_refs, refs = _take(refs, len(saved))
        dy_ref, refs = refs[0], refs[1:]
        dfin_refs, refs = _take(refs, len(d_final_leaves))
        dx_refs, refs = _take(refs, len(xs))
        dc0_refs, df_refs = _take(refs, len(d_final_leaves))
        fresh_k = jax.tree.unflatten(fresh_tree, [r[...] for r in f_refs])

        def body(j, grads):
            d_leaves, d_fresh = grads
            i = n - 1 - j
            start = jax.tree.unflatten(carry_tree, [_rows(r, i, 1)[0] for r in s_refs])
            chunk = tuple(_rows(r, i * c, c) for r in x_refs)
            flags = tuple(_rows(r, i * c, c) for r in a_refs)
            end = _end(i, c, length)
            _, pullback = jax.vjp(lambda cr, f, x: step(cr, f, x, flags, end), start, fresh_k, chunk)
            d_start, d_f, d_chunk = pullback((jax.tree.unflatten(carry_tree, d_leaves), _rows(dy_ref, i * c, c)))
            for ref, d in zip(dx_refs, d_chunk, strict=True):
                _set_rows(ref, i * c, d)
            d_fresh = [a + b.astype(jnp.float32) for a, b in zip(d_fresh, jax.tree.leaves(d_f), strict=True)]
            return [x.astype(jnp.float32) for x in jax.tree.leaves(d_start)], d_fresh

        init = ([r[...] for r in dfin_refs], [jnp.zeros(r.shape, jnp.float32) for r in df_refs])
        d_leaves, d_fresh = lax.fori_loop(0, n, body, init)
        for ref, d in zip(dc0_refs, d_leaves, strict=True):
            ref[...] = d
        for ref, d in zip(df_refs, d_fresh, strict=True):
            ref[...] = d

    inputs = [*fresh_leaves, *xs, *aux, *saved, d_ys.astype(jnp.float32), *d_final_leaves]
    x_split = list(split.xs or [False] * len(xs))
    splits = [True] * len(fresh_leaves) + x_split + [False] * len(aux) + [True] * (len(saved) + 1 + len(d_final_leaves))
    # an unsplit input's gradient is a sum over the value blocks: each program writes its partial
    partial = [split.blocks > 1 and not cut for cut in x_split]
    dx_shapes = [jax.ShapeDtypeStruct((split.blocks,) + x.shape, jnp.float32) if p else
                 jax.ShapeDtypeStruct(x.shape, x.dtype) for x, p in zip(xs, partial, strict=True)]
    state_shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in d_final_leaves + fresh_leaves]
    outs = pl.pallas_call(kernel, out_shape=dx_shapes + state_shapes, grid=(batch, heads, split.blocks),
                          in_specs=[split.spec(x.shape, cut) for x, cut in zip(inputs, splits, strict=True)],
                          out_specs=[split.partial_spec(s.shape) if p else split.spec(s.shape, cut)
                                     for s, p, cut in zip(dx_shapes, partial, x_split, strict=True)]
                          + [split.spec(s.shape, True) for s in state_shapes],
                          interpret=interpret, compiler_params=compiler_params(interpret),
                          name="memzoo_chunks_bwd")(*inputs)
    d_xs, outs = _take(outs, len(xs))
    d_xs = [d.sum(0).astype(x.dtype) if p else d for d, x, p in zip(d_xs, xs, partial, strict=True)]
    d_carry0, d_fresh = _take(outs, len(d_final_leaves))
    return (jax.tree.unflatten(carry_tree, d_carry0), jax.tree.unflatten(fresh_tree, d_fresh), tuple(d_xs),
            tuple(jnp.zeros_like(a) for a in aux))


_scan.defvjp(_scan_fwd, _scan_bwd)


def pallas_chunk_scan(step: Callable, carry0, fresh, xs: tuple, aux: tuple, chunk_size: int,
                      interpret: bool | None = None, grad_step: Callable | None = None,
                      split: ValueSplit = ValueSplit()):
    """Runs `step` (module docstring) over the chunks of every (batch, head), forward and backward
    in Pallas. `xs`: per-token inputs `[batch, seq, heads, ...]` (any float dtype); `aux`: fp32
    flags `[batch, seq, heads]`; `carry0`, `fresh`: fp32 state pytrees with leaves
    `[batch, heads, ...]`; `step` must be hashable (a module-level function or a
    `functools.partial` of one with hashable arguments). `grad_step` (default `step`): the same
    function for the backward kernel to differentiate, where it may differ in how (e.g. a solve
    with a `custom_vjp`, which must not reach the forward kernel: Triton cannot lower a
    `custom_vjp_call`). A ragged sequence is zero-padded to whole chunks (`end` tells the last
    chunk's step where the real tokens stop). `split`: the value dimension cut across programs
    (`ValueSplit`; default: one block). Returns (final carry, `ys: [batch, seq, heads, dv]` fp32)."""
    interpret = interpret_mode() if interpret is None else interpret
    seq = xs[0].shape[1]
    padded = -(-seq // chunk_size) * chunk_size
    pad = lambda x: jnp.pad(_head_major(x), [(0, 0), (0, 0), (0, padded - seq)] + [(0, 0)] * (x.ndim - 3))  # noqa: E731
    carry, ys = _scan((step, grad_step or step), chunk_size, seq, interpret, split, carry0, fresh,
                      tuple(map(pad, xs)), tuple(pad(a).astype(jnp.float32) for a in aux))
    return carry, _head_major(ys[:, :, :seq])


def compile_probe(loss: Callable, *shapes) -> None:
    """Compiles `loss(*args)` (a scalar) and its gradient in every argument for the default
    device: what an op's Pallas `probe` runs once before `backend="auto"` picks the kernels."""
    jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(shapes))))).lower(*shapes).compile()


def probe_length(chunk_size: int) -> int:
    """A probe's sequence length: two whole chunks and a ragged tail (the padded path)."""
    return 2 * chunk_size + max(1, chunk_size // 2)


def probe_starts(seq: int) -> jax.Array:
    """`[1, seq, 1]` document starts for a probe: one inside the first chunk."""
    return jnp.zeros((1, seq, 1), bool).at[:, seq // 5 + 1].set(True)

"""Plumbing shared by every op in `kernels/`: argument validation, backend choice, the
token-by-token scan of the reference backends, the chunk / tail split of the chunked backends, and
the two pieces of chunk algebra every delta-rule op needs (masked decay ratios and the
unit-lower-triangular solve of the UT / WY form).

Layout conventions (FLA-style): `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]`,
per-token gates `[batch, seq, heads]`, recurrent states `[batch, heads, dk, dv]`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

ACCELERATORS = ("gpu", "tpu")  # where "auto" prefers a Pallas backend
GATE_LAYOUT = "[batch, seq, heads]"
STATE_LAYOUT = "[batch, heads, dk, dv]"


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One backend of an op: `run` takes the op's validated arguments in the caller's dtypes and
    casts for itself (a Pallas kernel may keep bf16 where the XLA form computes in fp32).
    `platforms`: where it can run (`jax.devices()[0].platform` names; None = everywhere)."""

    name: str
    run: Callable
    platforms: tuple[str, ...] | None = None
    doc: str = ""
    auto_platforms: tuple[str, ...] | None = None  # where "auto" may pick it (None: wherever it runs)
    probe: Callable[..., Any] | None = None  # probe(*signature): a tiny forward + backward compile at the call's
    # static shapes (head dims, chunk size, variant), tried before "auto" picks it

    def available(self, platform: str) -> bool:
        return self.platforms is None or platform in self.platforms

    def auto_picks(self, op: str, platform: str, signature: tuple = ()) -> bool:
        """Whether `auto` may run it on `platform`: available, allowed there, and its probe (once per
        op, platform and `signature`) compiles; a probe that fails warns once and the next name is tried."""
        if not self.available(platform) or (self.auto_platforms is not None and platform not in self.auto_platforms):
            return False
        return self.probe is None or _probe_compiles(op, self.name, platform, self.probe, signature)


@functools.cache
def _probe_compiles(op: str, name: str, platform: str, probe: Callable[..., Any], signature: tuple) -> bool:
    try:
        probe(*signature)
    except Exception as error:  # noqa: BLE001 (any lowering or compile error means: not on this device)
        warnings.warn(f"{op}: the {name!r} backend does not compile on {platform} for {signature} ({type(error).__name__}: "
                      f"{str(error)[:300]}); 'auto' falls back to the next backend", RuntimeWarning, stacklevel=4)
        return False
    return True


class Implementations(dict):
    """An op's table of implementations by name, and its `auto` preference list (the first one
    available on the platform runs). New backends land with `register`."""

    def __init__(self, op: str, implementations: Sequence[Implementation], auto: Sequence[str]):
        super().__init__()
        self.op = op
        for impl in implementations:
            self.register(impl)
        self.auto = tuple(auto)

    def register(self, impl: Implementation, *, prefer: bool = False) -> Implementation:
        """Adds `impl`; `prefer=True` puts it first in the `auto` list (where it is available)."""
        if impl.name in self or impl.name == "auto":
            raise ValueError(f"{self.op}: an implementation named {impl.name!r} is already registered")
        self[impl.name] = impl
        if prefer:
            self.auto = (impl.name,) + self.auto
        return impl

    def select(self, backend: Any, platform: str | None = None, signature: tuple = ()) -> Implementation:
        """The implementation that runs for `backend`: "auto" (the first of the `auto` list that
        `auto_picks` on this platform), one registered name, or a sequence of names tried in order (a fallback list: the
        first available on this platform runs)."""
        platform = platform or jax.devices()[0].platform
        allowed = ", ".join(map(repr, ("auto", *self)))
        if isinstance(backend, str):
            names = self.auto if backend == "auto" else (backend,)
        elif isinstance(backend, (list, tuple)) and backend and all(isinstance(b, str) for b in backend):
            names = tuple(backend)
        else:
            raise ValueError(f"{self.op}: backend must be one of {allowed}, or a list of names tried in order; "
                             f"got {backend!r}")
        unknown = [n for n in names if n not in self]
        if unknown:
            raise ValueError(f"{self.op}: backend must be one of {allowed}, or a list of names tried in order; "
                             f"got {backend!r} (unknown: {', '.join(map(repr, unknown))})")
        for name in names:
            if self[name].auto_picks(self.op, platform, signature) if backend == "auto" else self[name].available(platform):
                return self[name]
        raise ValueError(f"{self.op}: none of {list(names)} runs on platform {platform!r} "
                         f"({', '.join(f'{n}: {self[n].platforms}' for n in names)}); add 'xla' to the list")


def where_leading(cond: jax.Array, a: Any, b: Any) -> Any:
    """`a` where `cond` else `b`, leaf by leaf: `cond`'s axes are the leading axes of every leaf of `b`
    (broadcast over the rest); the result keeps b's dtypes."""
    return jax.tree.map(lambda x, y: jnp.where(jnp.reshape(cond, cond.shape + (1,) * (y.ndim - cond.ndim)),
                                               jnp.asarray(x).astype(y.dtype), y), a, b)


def as_fp32(*xs) -> tuple[jax.Array, ...]:
    """The arrays in fp32 (the XLA and reference backends compute in fp32 whatever comes in)."""
    return tuple(jnp.asarray(x).astype(jnp.float32) for x in xs)


def _check_float(name: str, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return x


def validate_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[int, int, int, int, int]:
    """Checks `q, k: [batch, seq, heads, dk]`, `v: [batch, seq, heads, dv]` and returns
    `(batch, seq, heads, dk, dv)`."""
    q, k, v = (_check_float(n, x) for n, x in (("q", q), ("k", k), ("v", v)))
    if q.ndim != 4:
        raise ValueError(f"q must be 4-D [batch, seq, heads, dk]; got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q, [batch, seq, heads, dk] = {q.shape}; got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [batch, seq, heads, dv] with [batch, seq, heads] = {q.shape[:3]} "
                         f"as in q; got {v.shape}")
    batch, seq, heads, dk = q.shape
    if seq < 1:
        raise ValueError(f"q, k, v must hold at least one token (seq >= 1); got seq = {seq}")
    return batch, seq, heads, dk, v.shape[-1]


def check_shape(name: str, x: jax.Array, shape: tuple[int, ...], layout: str) -> jax.Array:
    """Returns `x` as an fp32 array after checking that it is floating point with shape `shape`
    (named `layout` in the error message)."""
    x = _check_float(name, x)
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}; got {x.shape}")
    return x.astype(jnp.float32)


def state_or_zeros(name: str, x: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """An fp32 state `[batch, heads, dk, dv]`: the validated `x`, or zeros when `x` is None."""
    if x is None:
        return jnp.zeros(shape, jnp.float32)
    return check_shape(name, x, shape, STATE_LAYOUT)


def check_segment_ids(segment_ids: Any, batch: int, seq: int) -> jax.Array | None:
    """`segment_ids` as an integer `[batch, seq]` array (None stays None), or a ValueError naming the problem."""
    if segment_ids is None:
        return None
    segment_ids = jnp.asarray(segment_ids)
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"segment_ids must be an integer array [batch, seq]; got dtype {segment_ids.dtype}")
    if segment_ids.shape != (batch, seq):
        raise ValueError(f"segment_ids must have shape [batch, seq] = {(batch, seq)}; got {segment_ids.shape}")
    return segment_ids


def momentum_inputs(log_momentum: Any, initial_momentum: Any, gate_shape: tuple[int, ...],
                    initial: Callable[[Any], Any]) -> tuple[jax.Array | None, Any]:
    """The validated (log_momentum, S_0) of an op with optional momentum: (None, None) without it
    (then `initial_momentum` must be None too); else the gate checked against `gate_shape` and
    `initial(initial_momentum)`, the op's own check of S_0 (zeros when it is None)."""
    if log_momentum is None:
        if initial_momentum is not None:
            raise ValueError("initial_momentum was given but log_momentum is None (no momentum: no "
                             "momentum state is carried); pass log_momentum or drop initial_momentum")
        return None, None
    return check_shape("log_momentum", log_momentum, gate_shape, GATE_LAYOUT), initial(initial_momentum)


def document_starts(segment_ids: Any, batch: int, seq: int, heads: int) -> jax.Array | None:
    """`segment_ids: [batch, seq]` integer document ids (or None) -> `[batch, seq, heads]` bool,
    True where a token's id differs from the previous token's: there the recurrence restarts from
    the initial states (packed documents never see each other)."""
    segment_ids = check_segment_ids(segment_ids, batch, seq)
    if segment_ids is None:
        return None
    starts = jnp.concatenate([jnp.zeros((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return jnp.broadcast_to(starts[:, :, None], (batch, seq, heads))


def check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1; got {chunk_size!r}")
    return chunk_size


def default_scale(scale: float | None, dk: int) -> float:
    return dk**-0.5 if scale is None else scale


def token_scan(step: Callable, carry: Any, xs: Any) -> tuple[Any, jax.Array]:
    """Runs `step(carry, x_t) -> (carry, y_t)` over the tokens in order.

    `xs`: a pytree of `[batch, seq, heads, ...]` arrays; `step` sees one token, `[batch, heads, ...]`.
    Returns the last carry and `ys: [batch, seq, heads, ...]`."""
    xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), xs)
    carry, ys = lax.scan(step, carry, xs)
    return carry, jnp.moveaxis(ys, 0, 1)


def _to_chunks(x: jax.Array, n: int, c: int) -> jax.Array:
    """`[batch, n*c, heads, *rest] -> [n, batch, heads, c, *rest]`."""
    b, _, h, *rest = x.shape
    x = x.reshape(b, n, c, h, *rest)
    return x.transpose(1, 0, 3, 2, *range(4, x.ndim))


def _from_chunks(y: jax.Array) -> jax.Array:
    """`[n, batch, heads, c, *rest] -> [batch, n*c, heads, *rest]`."""
    n, b, h, c, *rest = y.shape
    return y.transpose(1, 0, 3, 2, *range(4, y.ndim)).reshape(b, n * c, h, *rest)


def chunk_scan(body: Callable, carry: Any, xs: Any, chunk_size: int) -> tuple[Any, jax.Array]:
    """Runs `body(carry, chunk) -> (carry, y)` over consecutive chunks of `chunk_size` tokens.

    `xs`: a pytree of `[batch, seq, heads, ...]` arrays; `body` sees `[batch, heads, C, ...]` leaves
    and returns `y: [batch, heads, C, ...]`. The floor(seq / C) full chunks go through `lax.scan`;
    the seq mod C remaining tokens are one more, shorter chunk through the same body (no padding:
    a padded token is never neutral for every recurrence, e.g. momentum keeps flowing into the
    memory). The body is rematerialised (`jax.checkpoint`) so the backward pass keeps only the
    carries. Returns the last carry and `y: [batch, seq, heads, ...]`."""
    seq = jax.tree.leaves(xs)[0].shape[1]
    n, rem = divmod(seq, chunk_size)
    ys = []
    if n:
        full = jax.tree.map(lambda x: _to_chunks(x[:, : n * chunk_size], n, chunk_size), xs)
        carry, y = lax.scan(jax.checkpoint(body, prevent_cse=False), carry, full)
        ys.append(_from_chunks(y))
    if rem:
        tail = jax.tree.map(lambda x: _to_chunks(x[:, n * chunk_size:], 1, rem)[0], xs)
        carry, y = jax.checkpoint(body)(carry, tail)
        ys.append(_from_chunks(y[None]))
    return carry, ys[0] if len(ys) == 1 else jnp.concatenate(ys, axis=1)


def decay_ratios(log_cum: jax.Array, strict: bool = False) -> jax.Array:
    """`log_cum: [..., C]` cumulative log decays L (L_r = sum_{j<=r} log a_j) ->
    `[..., C, C]` with entry (r, j) = prod_{i=j+1..r} a_i = exp(L_r - L_j) for j <= r (j < r if
    `strict`), 0 above. The mask is applied before the exp, so no inf or NaN reaches either pass."""
    c = log_cum.shape[-1]
    mask = jnp.tril(jnp.ones((c, c), bool), -1 if strict else 0)
    diff = jnp.where(mask, log_cum[..., :, None] - log_cum[..., None, :], 0.0)
    return jnp.where(mask, jnp.exp(diff), 0.0)


def _grid(c: int) -> tuple[jax.Array, jax.Array]:
    """`(r, j)`: `[C, C]` int32 row and column indices."""
    return lax.broadcasted_iota(jnp.int32, (c, c), 0), lax.broadcasted_iota(jnp.int32, (c, c), 1)


# The in-chunk helpers below are masked `[..., C, C]` reductions and products instead of cumsum,
# cummax, gathers and static slices: the same code then runs in the xla backend and inside Pallas
# kernels (Mosaic TPU lowers no cumsum; Pallas Triton no slice, gather or cummax).


def prefix_sum(x: jax.Array) -> jax.Array:
    """Inclusive prefix sum over the last axis, `[..., C] -> [..., C]`."""
    r, j = _grid(x.shape[-1])
    return jnp.sum(jnp.where(j <= r, x[..., None, :], 0.0), axis=-1)


def last_entry(x: jax.Array, axis: int = -1) -> jax.Array:
    """`x`'s last entry along `axis` (the axis dropped): `x[..., -1]` for axis -1, `x[..., -1, :]` for -2."""
    return entry(x, x.shape[axis] - 1, axis)


def end_entry(x: jax.Array, axis: int = -1, end: jax.Array | int | None = None) -> jax.Array:
    """`x`'s entry `end - 1` along `axis` (the axis dropped): the last real row of a chunk whose
    rows from `end` on are padding; the last entry when `end` is None."""
    return last_entry(x, axis) if end is None else entry(x, end - 1, axis)


def entry(x: jax.Array, index: jax.Array | int, axis: int = -1) -> jax.Array:
    """`x`'s entry `index` (an int, or a traced int32 scalar) along `axis`, the axis dropped."""
    axis = axis % x.ndim
    position = lax.broadcasted_iota(jnp.int32, x.shape, axis)
    return jnp.sum(jnp.where(position == index, x, jnp.zeros((), x.dtype)), axis=axis)


def shift_down(x: jax.Array, rows: bool = False) -> jax.Array:
    """Entry r gets entry r-1 (entry 0 gets 0) along the last axis (`x: [..., C]`) or, with `rows`,
    along the rows of `x: [..., C, C']` (a product with the exact 0/1 shift matrix)."""
    r, j = _grid(x.shape[-2] if rows else x.shape[-1])
    if rows:
        return jnp.einsum("rj,...jc->...rc", (j == r - 1).astype(x.dtype), x, precision=lax.Precision.HIGHEST)
    return jnp.sum(jnp.where(j == r - 1, x[..., None, :], 0.0), axis=-1)


def in_chunk_documents(starts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`starts: [..., C]` document-start flags of one chunk -> (`last: [..., C]` the in-chunk index of
    the latest start at or before r, -1 if none: r continues the chunk's start state), and
    `same: [..., C, C]`, for i <= r True when no document starts in (i, r] (tokens i and r are in
    one document); it masks the in-chunk decay matrices."""
    r, j = _grid(starts.shape[-1])
    last = jnp.max(jnp.where((j <= r) & starts[..., None, :], j, -1), axis=-1)
    return last, last[..., :, None] == last[..., None, :]


def log_since_start(log_cum: jax.Array, log_step: jax.Array, last: jax.Array) -> jax.Array:
    """Cumulative log decays restarted at each token's document start: `[..., C]` with entry r =
    sum of `log_step` over the tokens from the latest start at or before r (or the chunk start) to r."""
    exclusive = log_cum - log_step  # sum over the tokens before j
    _, j = _grid(log_cum.shape[-1])
    at_start = jnp.sum(jnp.where(j == last[..., :, None], exclusive[..., None, :], 0.0), axis=-1)
    return log_cum - at_start


def start_state_reads(x: jax.Array, state: jax.Array, initial: jax.Array, last: jax.Array | None) -> jax.Array:
    """Row r of `x: [..., C, dk]` times the state its document starts from in this chunk: the
    chunk's start `state` or, after an in-chunk start, `initial` (both `[..., dk, dv]`)."""
    reads = jnp.einsum("...rk,...kv->...rv", x, state)
    if last is None:
        return reads
    return jnp.where((last >= 0)[..., None], jnp.einsum("...rk,...kv->...rv", x, initial), reads)


def solve_unit_lower(a: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solves `(I + tril(a, -1)) X = rhs` for X. `a: [..., C, C]`, `rhs: [..., C, d]`; only the
    strictly lower triangle of `a` is used (the mask also keeps gradients off the rest).

    Accelerators use XLA's triangular solve. CPU uses forward substitution, one row at a time:
    with jaxlib 0.10.2, training steps whose backward pass holds XLA:CPU's triangular solve
    deadlocked (every thread waiting; the Gated DeltaNet repro in docs/fidelity.md hung 3 of 3
    runs, 0 of 3 with this substitution)."""
    return jax.lax.platform_dependent(jnp.tril(a, -1), rhs, cpu=solve_by_substitution, default=solve_by_xla)


def solve_by_substitution(a: jax.Array, rhs: jax.Array) -> jax.Array:
    """`solve_unit_lower` for a strictly lower `a`, row by row: x_i = rhs_i - sum_{j<i} a_ij x_j."""
    def row(i, x):  # rows >= i of x are still zero
        return x.at[..., i, :].set(rhs[..., i, :] - jnp.einsum("...j,...jd->...d", a[..., i, :], x))

    return jax.lax.fori_loop(0, a.shape[-1], row, jnp.zeros_like(rhs))


def solve_by_xla(a: jax.Array, rhs: jax.Array) -> jax.Array:
    """`solve_unit_lower` for a strictly lower `a` by XLA's triangular solve (unit_diagonal: it never
    reads the diagonal, it takes it as ones)."""
    return jax.scipy.linalg.solve_triangular(a, rhs, lower=True, unit_diagonal=True)


@jax.custom_vjp
def solve_by_masked_rows(a: jax.Array, rhs: jax.Array) -> jax.Array:
    """`solve_unit_lower` for a strictly lower `a` with no dynamic indexing, for Pallas kernels:
    forward substitution whose step i selects row i with a mask (`[..., C, C]` and `[..., C, d]`
    elementwise work per row; no `[1, C] x [C, d]` product: Triton's dots need 16 rows). Its VJP is the transposed solve:
    (I + A)^T G = dX, d rhs = G, dA = -strict_lower(G X^T)."""
    return _substitute(a, rhs, reverse=False)


def substitute_rows(a: jax.Array, rhs: jax.Array) -> jax.Array:
    """`solve_by_masked_rows` without its custom VJP (what a forward-only kernel traces: Pallas
    cannot lower a `custom_vjp_call`)."""
    return _substitute(a, rhs, reverse=False)


def _substitute(a: jax.Array, rhs: jax.Array, reverse: bool) -> jax.Array:
    """Solves (I + a) X = rhs for a strictly lower (reverse=False) or strictly upper (reverse=True)
    `a`, one row per step, last row first when reverse."""
    c = a.shape[-1]
    rows = lax.broadcasted_iota(jnp.int32, (c, 1), 0)

    def row(step, x):
        pick = rows == (c - 1 - step if reverse else step)                  # [C, 1]
        a_i = jnp.sum(jnp.where(pick, a, 0.0), axis=-2)                     # [..., C]: row i of a
        r_i = jnp.sum(jnp.where(pick, rhs, 0.0), axis=-2, keepdims=True)    # [..., 1, d]
        return jnp.where(pick, r_i - jnp.sum(a_i[..., :, None] * x, axis=-2, keepdims=True), x)

    return lax.fori_loop(0, c, row, jnp.zeros_like(rhs))


def _masked_rows_fwd(a, rhs):
    x = _substitute(a, rhs, reverse=False)
    return x, (a, x)


def _masked_rows_bwd(residuals, dx):
    a, x = residuals
    c = a.shape[-1]
    strict = lax.broadcasted_iota(jnp.int32, (c, c), 0) > lax.broadcasted_iota(jnp.int32, (c, c), 1)
    g = _substitute(jnp.swapaxes(jnp.where(strict, a, 0.0), -1, -2), dx, reverse=True)
    return -jnp.where(strict, g @ jnp.swapaxes(x, -1, -2), 0.0), g


solve_by_masked_rows.defvjp(_masked_rows_fwd, _masked_rows_bwd)

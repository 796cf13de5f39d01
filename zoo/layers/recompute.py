"""`recompute(f)`: `jax.checkpoint(f)` whose recomputation waits for the backward pass to need it.

`jax.checkpoint` keeps only f's inputs and recomputes f in the backward pass, but nothing orders the
recomputation after the cotangent of f's output, and XLA:CPU removes the optimization barriers that
`jax.checkpoint` relies on before it schedules and simplifies the program (OptimizationBarrierExpander
runs after CSE, early in the CPU pipeline): the recomputation then merges with the forward values or
runs ahead of the loss, so every layer's "recomputed" activations (the mixer's conv and feature map,
the norms, the SwiGLU product, in float32) stay alive at once, costing as much as saving them.

Here the backward rule recomputes f only from its inputs *and* the incoming cotangent: through one
`optimization_barrier` (kept until after scheduling on GPU / TPU) and, on CPU, inside a `lax.cond`
on a value of the cotangent (both branches recompute, so the result never depends on the predicate;
a conditional's body can neither be merged with the forward values nor run before its operands).
The values and gradients are those of f.

Closed-over float arrays (module parameters) are hoisted with `jax.closure_convert` and differentiated
as explicit inputs; pass integer arrays (segment ids) as arguments: a closed-over traced integer would
leak into the backward pass (under nnx.remat, say). Reverse mode only (a `custom_vjp`): forward-mode
differentiation is not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def recompute(fun: Callable, *, static_argnums: tuple[int, ...] = ()) -> Callable:
    """Like `jax.checkpoint(fun, static_argnums=...)` (only the inputs are saved), with the
    recomputation ordered after the output's cotangent (module docstring)."""
    static_argnums = tuple(static_argnums)

    @functools.wraps(fun)
    def wrapped(*args):
        static = {i: args[i] for i in static_argnums}
        dynamic = tuple(a for i, a in enumerate(args) if i not in static)

        def call(*dyn):
            it = iter(dyn)
            return fun(*(static[i] if i in static else next(it) for i in range(len(args))))

        closed, consts = jax.closure_convert(call, *dynamic)
        return _recomputed(closed, tuple(consts), dynamic)

    return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recomputed(fun, consts, args):
    return fun(*args, *consts)


def _recomputed_fwd(fun, consts, args):
    return fun(*args, *consts), (consts, args)


def _recomputed_bwd(fun, saved, cotangent):
    def run(operands):
        consts, args, ct = jax.lax.optimization_barrier(operands)
        _, vjp = jax.vjp(lambda c, a: fun(*a, *c), consts, args)
        return vjp(ct)

    operands = (*saved, cotangent)
    probe = next((x for x in jax.tree.leaves(cotangent)
                  if jnp.issubdtype(x.dtype, jnp.inexact) and x.size), None)
    if probe is None:
        return run(operands)
    first = probe.ravel()[0]

    def on_cpu(operands):  # NaN or not, both branches compute the same
        return jax.lax.cond(first == first, run, run, operands)

    return jax.lax.platform_dependent(operands, cpu=on_cpu, default=run)


_recomputed.defvjp(_recomputed_fwd, _recomputed_bwd)

#!/usr/bin/env python
"""Causal attention implementations of `zoo.layers.attend` side by side: forward and forward +
backward time (the fastest of --repeats warm calls), and the largest difference from the XLA
reference, for full and sliding-window attention, with and without packed-document segment ids.
Prints a table, writes JSON.

    python scripts/bench_attention.py --seq 1024                       # CPU: xla vs blockwise
    python scripts/bench_attention.py --batch 4 --seq 8192 --device    # GPU: + cudnn (bf16), pallas_triton, tokamax
    python scripts/bench_attention.py --layer-lengths 1k,4k,16k,32k --dtypes float32   # + attention layers

`--layer-lengths` adds whole layers (projections included, batch `--batch`, `--heads` x `--dim`):
softmax `Attention` (implementation auto) against PolySketchFormer's `PolySketchAttention` (learned
sketch r = 32 with exact local blocks of 256, the block algorithm) and, up to 4k tokens, exact
polynomial attention (quadratic), and the MS-SSM mixer at the same d_model (default `model.msssm`:
expand 2, S = 3, N = 16, chunk 64); forward and forward + backward (gradients of the input).

Errors are measured on the first half of the sequence, which is one document in every variant
(the segment-id rows put a second document in the second half), under
`jax.default_matmul_precision("highest")`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_memory import best_time  # noqa: E402  (scripts/: the fastest of the warm calls)
from flax import nnx  # noqa: E402

from zoo.evaluation.settings import parse_length  # noqa: E402
from zoo.layers import Attention, tokamax_attention  # noqa: E402
from zoo.layers.attend import attend  # noqa: E402
from zoo.layers.msssm import MSSSM, MSSSMFormat  # noqa: E402
from zoo.layers.polysketch import PolySketchAttention, PolySketchFormat  # noqa: E402


def measure(q, k, v, impl: str, window: int, segment_ids, reference, repeats: int) -> dict:
    def fwd(q, k, v):
        return attend(q, k, v, segment_ids=segment_ids, window=window, implementation=impl)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v).astype(jnp.float32) ** 2)

    with jax.default_matmul_precision("highest"):
        out = jax.jit(fwd)(q, k, v).astype(jnp.float32)
        half = q.shape[1] // 2
        err = None if reference is None else float(jnp.max(jnp.abs(out[:, :half] - reference[:, :half])))
        return dict(fwd_ms=1e3 * best_time(jax.jit(fwd), q, k, v, repeats=repeats),
                    fwd_bwd_ms=1e3 * best_time(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), q, k, v, repeats=repeats),
                    max_err_vs_xla=err), out


EXACT_MAX_LEN = 4096  # exact polynomial attention builds [T, T] weights per head


def layer_rows(lengths, batch: int, heads: int, dim: int, dtype: str, repeats: int) -> list[dict]:
    """Forward and forward + backward of whole attention layers at each length."""
    d_model = heads * dim
    common = dict(std=0.02, out_std=0.02, dtype=jnp.dtype(dtype))
    layers = {
        "softmax": lambda: Attention(d_model, heads, heads, dim, rope_theta=10000.0, sliding_window=0, conv_width=0,
                                     rngs=nnx.Rngs(0), **common),
        "polysketch": lambda: PolySketchAttention(d_model, heads, dim, spec=PolySketchFormat(), rope_theta=10000.0,
                                                  rngs=nnx.Rngs(0), **common),
        "polynomial_exact": lambda: PolySketchAttention(
            d_model, heads, dim, spec=PolySketchFormat(feature="exact"), rope_theta=10000.0, rngs=nnx.Rngs(0),
            **common),
        "msssm": lambda: MSSSM(d_model, spec=MSSSMFormat(), rngs=nnx.Rngs(0), **common),  # a token mixer too
    }
    rows = []
    for t in lengths:
        x = jax.random.normal(jax.random.key(t), (batch, t, d_model), jnp.dtype(dtype))
        for name, make in layers.items():
            row = dict(layer=name, length=t, dtype=dtype)
            if name == "polynomial_exact" and t > EXACT_MAX_LEN:
                row["error"] = f"skipped above {EXACT_MAX_LEN} tokens (quadratic weights)"
            else:
                try:
                    graphdef, state = nnx.split(make())
                    fwd = jax.jit(lambda x, state, g=graphdef: nnx.merge(g, state)(x))
                    grad = jax.jit(jax.grad(lambda x, state, g=graphdef: jnp.sum(
                        nnx.merge(g, state)(x).astype(jnp.float32) ** 2)))
                    row.update(fwd_ms=1e3 * best_time(fwd, x, state, repeats=repeats),
                               fwd_bwd_ms=1e3 * best_time(grad, x, state, repeats=repeats))
                except Exception as e:  # noqa: BLE001  out of memory is a result too
                    row["error"] = str(e).splitlines()[0][:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--windows", default="0,512", help="0 = full causal attention")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", action="store_true", help="also time cudnn (bf16, no segment ids), pallas_triton (no window) and tokamax "
                   "(where installed)")
    p.add_argument("--out", default="", help="JSON path (default scripts/results/bench_attention_<platform>.json)")
    p.add_argument("--layer-lengths", default="", help="also time whole layers at these lengths, e.g. 1k,4k,16k")
    p.add_argument("--skip-kernels", action="store_true", help="only the --layer-lengths part")
    args = p.parse_args(argv)
    shape = (args.batch, args.seq, args.heads, args.dim)
    keys = jax.random.split(jax.random.key(0), 3)
    segments = jnp.ones(shape[:2], jnp.int32).at[:, args.seq // 2:].set(2)
    rows = []
    for dtype in [] if args.skip_kernels else args.dtypes.split(","):
        q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)
        for window in (int(w) for w in args.windows.split(",")):
            reference = None
            variants = [("xla", True), ("blockwise", True), ("blockwise", False)]
            if args.device and dtype in ("bfloat16", "float16"):
                variants.append(("cudnn", False))
            if args.device and not window:  # Pallas' Triton flash kernel (opt-in): packed documents, no window
                variants.append(("pallas_triton", True))
            if args.device and tokamax_attention.available():  # tokamax's own kernel choice; documents as a mask
                variants += [("tokamax", True), ("tokamax", False)]
            for impl, with_segments in variants:
                row = dict(dtype=dtype, window=window, implementation=impl, segment_ids=with_segments)
                try:
                    result, out = measure(q, k, v, impl, window, segments if with_segments else None, reference,
                                          args.repeats)
                    row.update(result)
                    if impl == "xla":
                        reference = out
                except Exception as e:  # noqa: BLE001  out of memory or an unsupported case is a result too
                    row["error"] = str(e).splitlines()[0][:200]
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\ndtype | window | implementation | segment_ids | fwd ms | fwd+bwd ms | max err vs xla")
    for r in rows:
        cells = [r["dtype"], r["window"], r["implementation"], r["segment_ids"]]
        cells += [f"{r[c]:.3g}" if isinstance(r.get(c), float) else r.get("error", "-") if c == "fwd_ms" else "-"
                  for c in ("fwd_ms", "fwd_bwd_ms", "max_err_vs_xla")]
        print(" | ".join(map(str, cells)))
    lengths = [parse_length(x) for x in args.layer_lengths.split(",") if x]
    layer_table = [r for dtype in args.dtypes.split(",") for r in layer_rows(
        lengths, args.batch, args.heads, args.dim, dtype, args.repeats)] if lengths else []
    if layer_table:
        print("\nlayer | length | dtype | fwd ms | fwd+bwd ms")
        for r in layer_table:
            cells = [f"{r[c]:.4g}" if c in r else r.get("error", "-") for c in ("fwd_ms", "fwd_bwd_ms")]
            print(" | ".join(map(str, [r["layer"], r["length"], r["dtype"], *cells])))
    dev = jax.devices()[0]
    out = Path(args.out) if args.out else ROOT / "scripts" / "results" / f"bench_attention_{dev.platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
                                   host=platform.machine(), shape=list(shape), args=vars(args), rows=rows,
                                   layers=layer_table), indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

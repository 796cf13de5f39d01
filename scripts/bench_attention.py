#!/usr/bin/env python
"""Causal attention implementations of `zoo.layers.attend` side by side: forward and forward +
backward time (the fastest of --repeats warm calls), and the largest difference from the XLA reference, for full and sliding-window
attention, with and without packed-document segment ids. Prints a table, writes JSON.

    python scripts/bench_attention.py --seq 1024                       # CPU: xla vs blockwise
    python scripts/bench_attention.py --batch 4 --seq 8192 --device    # GPU: + cudnn (bf16), pallas_triton, tokamax

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

from zoo.layers import tokamax_attention  # noqa: E402
from zoo.layers.attend import attend  # noqa: E402


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
    args = p.parse_args(argv)
    shape = (args.batch, args.seq, args.heads, args.dim)
    keys = jax.random.split(jax.random.key(0), 3)
    segments = jnp.ones(shape[:2], jnp.int32).at[:, args.seq // 2:].set(2)
    rows = []
    for dtype in args.dtypes.split(","):
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
    dev = jax.devices()[0]
    out = Path(args.out) if args.out else ROOT / "scripts" / "results" / f"bench_attention_{dev.platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
                                   host=platform.machine(), shape=list(shape), args=vars(args), rows=rows), indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The chunked ops (`kernels.gated_delta_rule`, `momentum_delta_rule`, `anchored_memory`,
`polysketch_attention`) per backend: forward and forward+backward time, achieved TFLOP/s and GB/s against the device's
peak, each backend's ratio to xla, a correctness check, and FLA's Triton `chunk_gated_delta_rule`
side by side when torch and fla-core import. Prints tables, writes one JSON to scripts/results/.

    python scripts/bench_kernels.py                 # CPU smoke run: a tiny grid (Pallas interpreted)
    python scripts/bench_kernels.py --device-run    # GPU / TPU: the full grid below, within --budget-s

`--device-run` grid: B*T = 32k tokens (B = 1 at T = 64k), T in {4k, 16k, 64k}, H = 16,
D = dk = dv in {64, 128}, chunk in {32, 64}, bf16 inputs; the cells run in priority order (T = 4k,
D = 128, chunk 64 first: the headline numbers) and whatever the time budget leaves is recorded as
skipped. The correctness check runs first, at "highest" matmul precision (at the default, fp32
matmuls on GPUs run as TF32 and differ by ~1e-4): pallas and xla against the token-by-token
reference, outputs, final states and the gradients of all inputs, fp32, ragged T with document
resets. FLA on the device machine (no network): carry its wheel (see /work/.library/device), e.g.
`pip download --no-deps fla-core==0.6.0 -d .whl` here and `pip install --no-deps --target /tmp/site
.whl/*.whl` there; fla-core 0.6.0 refuses its gated backward on Hopper with Triton < 3.7.1: the
refusal is recorded in the JSON and its forward is still timed.

Counted work (model FLOPs, 2 per multiply-add; the backward as twice the forward), per token and
head with chunk C: gated_delta_rule 4 C dk + 3 C dv + 6 dk dv (the C x C scores of k and q, the
solve, the intra-chunk values, the state reads and the write); momentum_delta_rule adds
2 C^2 (G = D N) and 4 dk dv (the momentum state); anchored_memory (two layers dk -> h -> dv,
h = --anchored-hidden, default dk): 8 (dk h + h dv) (forward and backward at the anchor, the read,
the write) + 2 C (dk + 2 h + dv) (the intra-chunk terms); polysketch_attention (sketch r =
SKETCH_SIZE, PolySketchFormer's learned-sketch default, with exact local attention in blocks of C
over dk-dim local features) 2 C (dk + dv) + 4 r^2 dv + 3 r^2 (the in-block weights and values, the
state read and write, the normaliser's read and update). Bytes: the forward reads q, k, v and the
gates and writes o; forward+backward adds reading q, k, v, the gates and do and writing their
gradients (the minimum traffic; states and chunk-start states are not counted); polysketch_attention
reads phi_q, phi_k (r each), v, local_q, local_k and writes o.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_memory import best_time  # noqa: E402  (scripts/: the fastest of the warm calls)

import kernels  # noqa: E402
from kernels.pallas_chunks import VALUE_BLOCK_FLAG  # noqa: E402
from zoo.training.flops import device_peak_flops  # noqa: E402

# Memory bandwidth per device, bytes/s (vendor figures).
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12, "TPU v5e": 0.82e12,
                  "TPU v5p": 2.76e12, "TPU v4": 1.2e12, "TPU v6": 1.64e12}
OPS = ("gated_delta_rule", "momentum_delta_rule", "anchored_memory", "polysketch_attention")
SKETCH_SIZE = 32  # PolySketchFormer's learned sketch r (r^2 = 1024 features), `model.polysketch.sketch_size`


def device_peak_bandwidth() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BANDWIDTH.items() if k.lower() in kind.lower()), None)


def op_inputs(op: str, batch: int, seq: int, heads: int, dim: int, dtype, hidden: int, seed: int = 0) -> dict:
    """Random, well-conditioned arguments: L2-normalised q and k, gates in their usual ranges."""
    keys = jax.random.split(jax.random.key(seed), 8)
    normal = lambda i, shape: jax.random.normal(keys[i], shape, jnp.float32)  # noqa: E731
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    shape, gate = (batch, seq, heads, dim), (batch, seq, heads)
    if op == "polysketch_attention":  # features of a LayerNorm-ed head: sketches ~ r^-1/2, unit local q, k
        sketch = (batch, seq, heads, SKETCH_SIZE)
        return {"phi_q": (normal(0, sketch) * SKETCH_SIZE**-0.5).astype(dtype),
                "phi_k": (normal(1, sketch) * SKETCH_SIZE**-0.5).astype(dtype), "v": normal(2, shape).astype(dtype),
                "local_q": unit(normal(3, shape)).astype(dtype), "local_k": unit(normal(4, shape)).astype(dtype)}
    x = {"q": unit(normal(0, shape)).astype(dtype), "k": unit(normal(1, shape)).astype(dtype),
         "v": normal(2, shape).astype(dtype)}
    if op == "gated_delta_rule":
        return {**x, "beta": jax.nn.sigmoid(normal(3, gate)), "g": jax.nn.log_sigmoid(4.0 + normal(4, gate))}
    x.update(lr=0.1 * jax.nn.sigmoid(normal(3, gate)), log_retention=jax.nn.log_sigmoid(5.0 + normal(4, gate)),
             log_momentum=jax.nn.log_sigmoid(2.0 + normal(5, gate)))
    if op == "anchored_memory":
        x["initial_weights"] = (normal(6, (batch, heads, dim, hidden)) * dim**-0.5,
                                normal(7, (batch, heads, hidden, dim)) * hidden**-0.5)
    return x


def call(op: str, x: dict, backend: str, chunk: int, segment_ids=None):
    """(o, final states) of `op` on the arguments `x`."""
    fn = getattr(kernels, op)
    if op == "polysketch_attention":
        return fn(**x, block_size=chunk, backend=backend, segment_ids=segment_ids, output_final_state=True)
    return fn(**x, chunk_size=chunk, backend=backend, segment_ids=segment_ids, output_final_state=True)


def flops_per_token(op: str, dim: int, chunk: int, hidden: int) -> float:
    """Forward model FLOPs per token and head (module docstring)."""
    if op == "anchored_memory":
        return 8 * (dim * hidden + hidden * dim) + 2 * chunk * (2 * dim + 2 * hidden)
    if op == "polysketch_attention":
        return 4 * chunk * dim + 4 * SKETCH_SIZE**2 * dim + 3 * SKETCH_SIZE**2
    base = 4 * chunk * dim + 3 * chunk * dim + 6 * dim * dim
    return base + (2 * chunk * chunk + 4 * dim * dim if op == "momentum_delta_rule" else 0)


def bytes_moved(op: str, tokens: int, heads: int, dim: int, itemsize: int, backward: bool) -> float:
    if op == "polysketch_attention":
        forward = tokens * heads * (2 * SKETCH_SIZE + 4 * dim) * itemsize
        return forward * (3 if backward else 1)
    gates = 2 if op == "gated_delta_rule" else 3
    forward = tokens * heads * (4 * dim * itemsize + gates * 4)
    return forward * (3 if backward else 1)


def timed_fns(op: str, backend: str, chunk: int):
    """jit(forward) and jit(forward + backward: the gradients of a random functional of o)."""
    diff = lambda x: {k: v for k, v in x.items() if k != "initial_weights"}  # noqa: E731

    def forward(x):
        return call(op, x, backend, chunk)[0]

    def loss(d, rest, cot):
        return jnp.sum(call(op, {**rest, **d}, backend, chunk)[0].astype(jnp.float32) * cot)

    def forward_backward(x, cot):
        return jax.grad(loss)(diff(x), {k: v for k, v in x.items() if k == "initial_weights"}, cot)

    return jax.jit(forward), jax.jit(forward_backward)


def measure(op: str, backend: str, batch: int, seq: int, heads: int, dim: int, chunk: int, dtype, hidden: int,
            repeats: int, peaks: tuple) -> dict:
    x = op_inputs(op, batch, seq, heads, dim, dtype, hidden)
    cot = jax.random.normal(jax.random.key(9), (batch, seq, heads, dim), jnp.float32)
    fwd, fwd_bwd = timed_fns(op, backend, chunk)
    row = {"op": op, "backend": backend, "batch": batch, "seq": seq, "heads": heads, "dim": dim, "chunk": chunk,
           "dtype": jnp.dtype(dtype).name}
    if op == "anchored_memory":
        row["hidden"] = hidden
    tokens, itemsize = batch * seq, jnp.dtype(dtype).itemsize
    for name, fn, args, factor, backward in (("fwd", fwd, (x,), 1, False), ("fwd_bwd", fwd_bwd, (x, cot), 3, True)):
        seconds = best_time(fn, *args, repeats=repeats)
        flops = factor * flops_per_token(op, dim, chunk, hidden) * tokens * heads
        moved = bytes_moved(op, tokens, heads, dim, itemsize, backward)
        row[f"{name}_ms"] = 1e3 * seconds
        row[f"{name}_tflops"] = flops / seconds / 1e12
        row[f"{name}_gbps"] = moved / seconds / 1e9
        if peaks[0]:
            row[f"{name}_flops_fraction"] = flops / seconds / peaks[0]
        if peaks[1]:
            row[f"{name}_bandwidth_fraction"] = moved / seconds / peaks[1]
    return row


def correctness(ops, backends, seq: int, chunk: int, dim: int, hidden: int) -> list[dict]:
    """Max |backend - reference| over outputs, final states and all input gradients (fp32, "highest"
    precision, ragged `seq`, a document start inside a chunk and one on the grid), relative to the
    reference's largest magnitude."""
    rows = []
    batch, heads = 2, 2
    ids = np.ones((batch, seq), np.int32)
    ids[0, chunk + chunk // 3:] = 2  # inside a chunk (not for the anchored op: its documents start on the grid)
    ids[1, 2 * chunk:] = 2
    with jax.default_matmul_precision("highest"):
        for op in ops:
            x = op_inputs(op, batch, seq, heads, dim, jnp.float32, hidden, seed=1)
            seg = jnp.asarray(ids if op != "anchored_memory" else np.repeat(ids[1:], batch, 0))
            cot = jax.random.normal(jax.random.key(3), (batch, seq, heads, dim), jnp.float32)

            def outputs_and_grads(x, backend, op=op, seg=seg, cot=cot):
                def loss(x):
                    o, states = call(op, x, backend, chunk, seg)
                    return jnp.sum(o * cot) + sum(jnp.sum(s) for s in jax.tree.leaves(states)), (o, states)
                grads, aux = jax.grad(loss, has_aux=True)(x)
                return aux, grads

            want = jax.jit(lambda x, op=op, f=outputs_and_grads: f(x, "reference"))(x)
            scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(want))
            for backend in backends:
                got = jax.jit(lambda x, b=backend, f=outputs_and_grads: f(x, b))(x)
                error = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got),
                                                                           jax.tree.leaves(want), strict=True))
                rows.append({"op": op, "backend": backend, "seq": seq, "chunk": chunk, "dim": dim,
                             "max_abs_error": error, "relative_error": error / scale})
    return rows


def fla_rows(cells, repeats: int) -> list[dict]:
    """FLA's Triton chunk_gated_delta_rule at (batch, seq, heads, dim) `cells` (bf16), or one row
    saying why it did not run."""
    try:
        import torch
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as error:  # noqa: BLE001 (absent or broken: say so in the JSON)
        return [{"op": "gated_delta_rule", "backend": "fla", "skipped": f"{type(error).__name__}: {error}"}]
    if not torch.cuda.is_available():
        return [{"op": "gated_delta_rule", "backend": "fla", "skipped": "no CUDA device for torch"}]
    rows = []
    for batch, seq, heads, dim in cells:
        gen = torch.Generator(device="cuda").manual_seed(0)
        rand = lambda *s, gen=gen: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
        q, k = (torch.nn.functional.normalize(rand(batch, seq, heads, dim), dim=-1) for _ in range(2))
        v = rand(batch, seq, heads, dim)
        g = torch.nn.functional.logsigmoid(4.0 + rand(batch, seq, heads))
        beta = torch.sigmoid(rand(batch, seq, heads))
        args = [a.to(torch.bfloat16).requires_grad_() for a in (q, k, v)] + [g.requires_grad_(), beta.requires_grad_()]
        row = {"op": "gated_delta_rule", "backend": "fla", "batch": batch, "seq": seq, "heads": heads, "dim": dim,
               "chunk": 64, "dtype": "bfloat16", "note": "FLA's chunk size is fixed at 64"}

        def run(backward, args=args):
            o, _ = chunk_gated_delta_rule(*args[:3], g=args[3], beta=args[4])
            if backward:
                o.float().sum().backward()
            return o

        for name, backward in (("fwd", False), ("fwd_bwd", True)):
            try:
                run(backward)  # first call: autotuning (over 80 s on an H100)
                torch.cuda.synchronize()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run(backward)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                row[f"{name}_ms"] = 1e3 * min(times)
            except Exception as error:  # noqa: BLE001 (e.g. the Hopper / Triton < 3.7.1 refusal)
                row[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:300]}"
        rows.append(row)
    return rows


def grid(device_run: bool) -> list[tuple[int, int, int, int, int]]:
    """(batch, seq, heads, dim, chunk) cells in priority order."""
    if not device_run:
        return [(2, 256, 2, 32, 32)]
    cells = []
    for seq in (4096, 16384, 65536):
        for dim in (128, 64):
            for chunk in (64, 32):
                cells.append((max(1, 32768 // seq), seq, 16, dim, chunk))
    return cells


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's speedup over the xla row of the same cell, and over FLA's at the same (batch,
    seq, dim) for gated_delta_rule (other_ms / ms: > 1 is faster)."""
    key = lambda r: (r["op"], r.get("batch"), r.get("seq"), r.get("dim"), r.get("chunk"))  # noqa: E731
    xla = {key(r): r for r in rows if r["backend"] == "xla"}
    fla = {key(r)[:4]: r for r in rows if r["backend"] == "fla"}
    for r in rows:
        for other, base in (("xla", xla.get(key(r))), ("fla", fla.get(key(r)[:4]))):
            for name in ("fwd", "fwd_bwd"):
                if base is not r and base and f"{name}_ms" in r and f"{name}_ms" in base:
                    r[f"{name}_speedup_vs_{other}"] = base[f"{name}_ms"] / r[f"{name}_ms"]
    return rows


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device-run", action="store_true", help="the full grid, for a GPU or TPU")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ops")
    parser.add_argument("--backends", default="xla,pallas", help="comma-separated backends to time")
    parser.add_argument("--anchored-hidden", type=int, default=0, help="the anchored memory's hidden width (0: dk)")
    parser.add_argument("--repeats", type=int, default=0, help="warm calls per timing (0: 5 on a device, 2 on CPU)")
    parser.add_argument("--value-block", type=int, default=0,
                        help="value columns per Pallas program for the delta rules (0: the platform default, "
                             "kernels.pallas_chunks.VALUE_BLOCKS)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting grid cells after this long")
    parser.add_argument("--out", default="", help="JSON path (default scripts/results/bench_kernels_<platform>.json)")
    args = parser.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    backends = [b for b in args.backends.split(",") if b]
    unknown = [o for o in ops if o not in OPS] + [b for b in backends if b not in ("xla", "pallas", "reference")]
    if unknown:
        parser.error(f"unknown ops or backends {unknown}; ops: {', '.join(OPS)}; backends: xla, pallas, reference")
    if args.value_block:
        os.environ[VALUE_BLOCK_FLAG] = str(args.value_block)
    started = time.perf_counter()
    device = jax.devices()[0]
    peaks = (device_peak_flops(), device_peak_bandwidth())
    repeats = args.repeats or (5 if args.device_run else 2)
    dtype = jnp.bfloat16 if args.device_run else jnp.float32
    print(f"device: {device.device_kind} ({device.platform}), peak {peaks[0]} FLOP/s, {peaks[1]} B/s")

    check = correctness(ops, backends, seq=150 if args.device_run else 37, chunk=64 if args.device_run else 8,
                        dim=64 if args.device_run else 8, hidden=args.anchored_hidden or (64 if args.device_run else 8))
    print_table("correctness (fp32, highest precision, vs the reference)", check,
                ["op", "backend", "seq", "chunk", "max_abs_error", "relative_error"])

    rows, skipped = [], []
    cells = grid(args.device_run)
    for cell in cells:
        batch, seq, heads, dim, chunk = cell
        for op in ops:
            for backend in backends:
                if time.perf_counter() - started > args.budget_s:
                    skipped.append({"op": op, "backend": backend, "cell": cell, "skipped": "time budget"})
                    continue
                try:
                    rows.append(measure(op, backend, batch, seq, heads, dim, chunk, dtype,
                                        args.anchored_hidden or dim, repeats, peaks))
                except Exception as error:  # noqa: BLE001 (out of memory, a lowering failure: recorded)
                    rows.append({"op": op, "backend": backend, "batch": batch, "seq": seq, "heads": heads,
                                 "dim": dim, "chunk": chunk, "error": f"{type(error).__name__}: {str(error)[:300]}"})
                print(json.dumps(rows[-1]), flush=True)
    if args.device_run and "gated_delta_rule" in ops:
        fla_cells = sorted({(b, s, h, d) for b, s, h, d, _ in cells})
        remaining = args.budget_s + 60 - (time.perf_counter() - started)
        rows += fla_rows([c for c in fla_cells if c[1] == 4096], repeats) if remaining > 0 else [
            {"op": "gated_delta_rule", "backend": "fla", "skipped": "time budget"}]
    rows = with_ratios(rows)
    print_table("speed", rows, ["op", "backend", "batch", "seq", "dim", "chunk", "fwd_ms", "fwd_bwd_ms",
                                "fwd_tflops", "fwd_bwd_tflops", "fwd_gbps", "fwd_speedup_vs_xla",
                                "fwd_bwd_speedup_vs_xla", "fwd_speedup_vs_fla", "fwd_bwd_speedup_vs_fla"])
    out = Path(args.out) if args.out else ROOT / "scripts" / "results" / f"bench_kernels_{device.platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
        "python": platform.python_version(), "peak_flops": peaks[0], "peak_bandwidth": peaks[1],
        "dtype": jnp.dtype(dtype).name, "repeats": repeats, "value_block": args.value_block or "platform default", "seconds": time.perf_counter() - started,
        "correctness": check, "rows": rows, "skipped": skipped}, indent=1))
    print(f"\nwrote {out}")
    return out


if __name__ == "__main__":
    main()

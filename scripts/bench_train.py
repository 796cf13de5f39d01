#!/usr/bin/env python
"""Training cost of every registered model: throughput, step time, memory, MFU, and the compiled
memory per layer; ratios to the Transformer baseline. One process, JSON to scripts/results/.

    python scripts/bench_train.py                       # CPU: the memory table + a small speed grid
    python scripts/bench_train.py --device-run          # GPU: the 170M-class grid (12 x d768)
    python scripts/bench_train.py --models titans_lmm --memory-lengths 4096 --speed-lengths ""

Part 1, memory per layer: the compiled `memory_analysis()` temporary bytes of loss + gradients
(batch 1, d_model 768, 12 heads, vocab 32000, bf16, memory chunk 64) at 4 layers minus 2 layers,
halved, for each `--remat` policy: what one more layer costs, without the model-wide terms (the
loss, the embedding). Abstract shapes only: nothing is allocated, so it runs anywhere.
Part 2, speed: a jitted AdamW train step at the named `--size` and each of `--speed-lengths`:
tokens/s, step time (median of `--steps` after one warm-up), memory (the compiled step's
arguments + outputs + temporaries; on GPU also the process's running peak from
`device.memory_stats()`), MFU (the compiled step's FLOPs / time / the device's peak; CPU has no
peak, so none). A point that runs out of memory is recorded as such, not fatal.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import zoo  # noqa: E402
from zoo.config import from_dict  # noqa: E402
from zoo.training.flops import device_peak_flops  # noqa: E402
from zoo.training.state import TrainState, model_parts  # noqa: E402
from zoo.training.step import make_train_step, token_losses  # noqa: E402

# Named sizes: model fields shared by every model (memory models add their registered defaults).
SIZES = {
    "tiny": dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4),
    "small": dict(vocab_size=8192, d_model=256, num_layers=4, num_heads=4),
    "170m": dict(vocab_size=32000, d_model=768, num_layers=12, num_heads=12),
}
WINDOW = 512  # sliding window of the hybrids (MAG, MAL); MAC's segment is the memory chunk
CHUNK = 64
TNT_GLOBAL = 2048  # TNT's C_G and S_L (the paper's efficiency runs), capped at the sequence length (--tnt-global)


def config(name: str, size: dict, seq: int, *, remat: str = "none", chunk: int = CHUNK, loss_chunk: int = 1024):
    """The benchmark config; for `tnt`, `chunk` is the local memory's C_L (C_G = S_L = TNT_GLOBAL,
    at most the sequence length)."""
    hybrid = name in ("titans_mag", "titans_mal")
    model = dict(name=name, dtype="bfloat16", remat=remat, sliding_window=WINDOW if hybrid else 0, **size)
    info = zoo.registry.models()[name]
    align = chunk if info.uses_memory else 0
    if info.uses_memory:
        model["memory"] = dict(chunk_size=chunk)
    if name == "tnt":
        model["memory"] = dict(chunk_size=min(TNT_GLOBAL, seq))
        model["tnt"] = dict(local_chunks=[chunk], shard=min(TNT_GLOBAL, seq))
        align = min(TNT_GLOBAL, seq)
    data = dict(seq_len=seq, align_documents=align, batch_size=1)
    return from_dict(dict(model=model, data=data, train=dict(loss_chunk=loss_chunk)))


def abstract_batch(batch: int, seq: int, lead: tuple = ()) -> dict:
    ints = jax.ShapeDtypeStruct(lead + (batch, seq), jnp.int32)
    return dict(inputs=ints, targets=ints, segment_ids=ints,
                loss_mask=jax.ShapeDtypeStruct(lead + (batch, seq), jnp.float32))


def loss_grad_temp_bytes(cfg, batch: int, seq: int) -> int:
    """Compiled temporary bytes of the summed token loss and its parameter gradients."""
    parts = model_parts(cfg)
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), parts.abstract_params())
    grad = jax.grad(lambda p, b: token_losses(parts, p, b, loss_chunk=cfg.train.loss_chunk)[0])
    compiled = jax.jit(grad).lower(params, abstract_batch(batch, seq)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def memory_per_layer(name: str, seq: int, remat: str, chunk: int) -> dict:
    size = dict(SIZES["170m"])
    temps = {}
    for layers in (2, 4):
        temps[layers] = loss_grad_temp_bytes(config(name, {**size, "num_layers": layers}, seq, remat=remat,
                                                    chunk=chunk), 1, seq)
    return dict(model=name, seq=seq, remat=remat, chunk=chunk, per_layer_gb=(temps[4] - temps[2]) / 2 / 1e9,
                two_layers_gb=temps[2] / 1e9)


def compile_step(name: str, size_name: str, seq: int, batch: int, remat: str, chunk: int = CHUNK):
    """(config, parts, optimizer, compiled AdamW step) for one speed point, lowered on abstract shapes."""
    cfg = config(name, SIZES[size_name], seq, remat=remat, chunk=chunk)
    parts = model_parts(cfg)
    tx = optax.adamw(1e-4)
    step = jax.jit(make_train_step(parts, tx, optax.constant_schedule(1e-4), loss_chunk=cfg.train.loss_chunk),
                   donate_argnums=0)
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), parts.abstract_params())
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                       opt_state=jax.eval_shape(tx.init, params),
                       rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    return cfg, tx, step.lower(state, abstract_batch(batch, seq, (1,))).compile()


def run_step(name: str, size_name: str, seq: int, batch: int, remat: str, chunk: int, steps: int,
             compiled_point) -> dict:
    """Times the compiled step of `compile_step`: one warm-up, then the median of `steps`."""
    cfg, tx, compiled = compiled_point
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    params = nnx.to_pure_dict(nnx.state(zoo.registry.build_model(cfg.model, rngs=nnx.Rngs(0))))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    toks = jax.random.randint(jax.random.key(1), (1, batch, seq), 0, cfg.model.vocab_size, jnp.int32)
    data = dict(inputs=toks, targets=toks, segment_ids=jnp.ones_like(toks), loss_mask=jnp.ones(toks.shape))
    state, metrics = compiled(state, data)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    mem = compiled.memory_analysis()
    step_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                  - mem.alias_size_in_bytes)
    stats = jax.devices()[0].memory_stats() or {}  # GPU: the process's running peak (all models so far)
    peak_flops = device_peak_flops()
    return dict(model=name, size=size_name, seq=seq, batch=batch, remat=remat, chunk=chunk, step_s=step_s,
                tokens_per_s=batch * seq / step_s, peak_gb=step_bytes / 1e9, peak_kind="compiled step",
                process_peak_gb=stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None,
                loss=float(metrics["loss"]), mfu=flops / step_s / peak_flops if peak_flops and flops else None)


def unrun(name: str, size_name: str, seq: int, batch: int, remat: str, chunk: int, why: str) -> dict:
    """The row of a speed point that did not run (`why`: out of memory, skipped)."""
    return dict(model=name, size=size_name, seq=seq, batch=batch, remat=remat, chunk=chunk, step_s=None,
                tokens_per_s=None,
                peak_gb=None, peak_kind=why, loss=None, mfu=None)


def is_out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def with_ratios(rows: list[dict], key: str, keys: tuple[str, ...]) -> list[dict]:
    """Adds `<key>_vs_transformer` to each row whose transformer row (same `keys`) exists."""
    base = {tuple(r[k] for k in keys): r[key] for r in rows if r["model"] == "transformer"}
    for r in rows:
        b = base.get(tuple(r[k] for k in keys))
        r[f"{key}_vs_transformer"] = r[key] / b if b and r[key] is not None else None
    return rows


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))

def main(argv=None) -> None:
    global TNT_GLOBAL  # --tnt-global sets it for config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated registry names (default: all)")
    p.add_argument("--memory-lengths", default="4096", help="T for the per-layer memory table ('' = skip)")
    p.add_argument("--memory-remat", default="none,block", help="remat policies of the memory table")
    p.add_argument("--memory-chunks", default="64,16", help="memory chunk sizes of the memory table")
    p.add_argument("--chunk-models", default="titans_lmm",
                   help="models measured at the chunk sizes other than 64 ('' = every memory model)")
    p.add_argument("--size", default="small", choices=sorted(SIZES), help="named model size of the speed grid")
    p.add_argument("--speed-lengths", default="1024", help="T for the speed grid, batch --batch ('' = skip)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--points", default="", help="speed grid as BATCHxT points, e.g. 4x8192,1x32768 "
                                                 "(instead of --batch and --speed-lengths)")
    p.add_argument("--remat", default="none", help="remat policy of the speed grid")
    p.add_argument("--tnt-global", type=int, default=TNT_GLOBAL, help="TNT's C_G and shard length S_L")
    p.add_argument("--tnt-chunk", type=int, default=16,
                   help="TNT's local chunk C_L in the speed grid (C_G = S_L = min(--tnt-global, T)); with titans_lmm in "
                        "--models, Titans also runs at C = C_L: the paper's headline ratio (TNT Table 1)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per speed point (after one warm-up)")
    p.add_argument("--budget-s", type=float, default=0,
                   help="start no speed point after this many seconds (0 = no limit); the rest are recorded "
                        "as skipped")
    p.add_argument("--compile-workers", type=int, default=1,
                   help="threads compiling the speed grid ahead of the runs (the device run uses 8)")
    p.add_argument("--device-run", action="store_true",
                   help="the 170M grid on an accelerator: 12 x d768, batch x T = 4x8192, 1x32768, 4x4096, remat "
                        "block, no memory table, a 420 s budget")
    p.add_argument("--out", default="", help="JSON path (default scripts/results/bench_train_<platform>.json)")
    args = p.parse_args(argv)
    if args.device_run:
        args.size, args.points, args.remat, args.memory_lengths = "170m", "4x8192,1x32768,4x4096", "block", ""
        args.budget_s = args.budget_s or 420  # the device machine's session: finish within 8 minutes
        args.compile_workers = max(args.compile_workers, 8)
    TNT_GLOBAL = args.tnt_global
    names = [n for n in args.models.split(",") if n] or sorted(zoo.registry.models())
    unknown = [n for n in names if n not in zoo.registry.models()]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; registered: {sorted(zoo.registry.models())}")
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731

    memory_rows = []
    for seq in ints(args.memory_lengths):
        for chunk in ints(args.memory_chunks):
            for remat in [r for r in args.memory_remat.split(",") if r]:
                for name in names:
                    chunk_models = [m for m in args.chunk_models.split(",") if m]
                    if chunk != CHUNK and (not zoo.registry.models()[name].uses_memory
                                           or (chunk_models and name not in chunk_models)):
                        continue
                    memory_rows.append(memory_per_layer(name, seq, remat, chunk))
                    print(json.dumps(memory_rows[-1]), flush=True)
    with_ratios(memory_rows, "per_layer_gb", ("seq", "remat"))
    if memory_rows:
        print_table("compiled memory per layer (loss + grads, batch 1, 170m width, bf16)", memory_rows,
                    ["model", "seq", "chunk", "remat", "per_layer_gb", "per_layer_gb_vs_transformer"])

    points = [tuple(int(x) for x in p.split("x")) for p in args.points.split(",") if p] or \
        [(args.batch, seq) for seq in ints(args.speed_lengths)]
    speed_rows = []
    started = time.perf_counter()
    jobs = []
    for batch, seq in points:
        for name in names:
            jobs.append((name, args.size, seq, batch, args.remat, args.tnt_chunk if name == "tnt" else CHUNK))
            if name == "titans_lmm" and "tnt" in names and args.tnt_chunk != CHUNK:
                jobs.append((name, args.size, seq, batch, args.remat, args.tnt_chunk))
    # Compiling is host work that releases the GIL: --compile-workers > 1 compiles the grid side by side
    # while the points run one at a time, in grid order.
    pool = concurrent.futures.ThreadPoolExecutor(max(1, args.compile_workers))
    futures = [pool.submit(compile_step, *job) for job in jobs]
    try:
        for job, future in zip(jobs, futures):
            if args.budget_s and time.perf_counter() - started > args.budget_s:
                future.cancel()
                speed_rows.append(unrun(*job, "skipped (time budget)"))
                continue
            try:
                row = run_step(*job, args.steps, future.result())
            except Exception as e:  # noqa: BLE001  out of memory is a result too
                if not is_out_of_memory(e):
                    raise
                row = unrun(*job, "out of memory")
            speed_rows.append(row)
            print(json.dumps(speed_rows[-1]), flush=True)
            write_json(args, memory_rows, speed_rows, partial=True)
    finally:  # compiles still running past the budget are left behind, not waited for
        pool.shutdown(wait=False, cancel_futures=True)
    with_ratios(speed_rows, "tokens_per_s", ("seq", "batch"))
    if speed_rows:
        print_table(f"train step, size {args.size}, remat {args.remat}", speed_rows,
                    ["model", "chunk", "batch", "seq", "tokens_per_s", "tokens_per_s_vs_transformer", "step_s",
                     "peak_gb",
                     "peak_kind", "mfu"])

    out = write_json(args, memory_rows, speed_rows, partial=False)
    print(f"\nwrote {out}")


def write_json(args, memory_rows: list[dict], speed_rows: list[dict], *, partial: bool) -> Path:
    """Writes the results so far (`partial` while the grid still runs, so a killed run keeps its rows)."""
    dev = jax.devices()[0]
    out = Path(args.out) if args.out else ROOT / "scripts" / "results" / f"bench_train_{dev.platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = dev.memory_stats() or {}
    out.write_text(json.dumps(dict(
        device=dev.device_kind, platform=dev.platform, jax=jax.__version__, host=platform.machine(),
        device_memory_limit_gb=stats["bytes_limit"] / 1e9 if "bytes_limit" in stats else None,
        partial=partial, args=vars(args), memory_per_layer=memory_rows, speed=speed_rows), indent=1))
    return out


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark of the memory engine and of a Titans model against the Transformer baseline.

    python scripts/bench_memory.py [--lengths 512,2048,8192] [--chunks 16,64] [--out FILE]

Part 1: one Titans memory layer (deep MLP memory, momentum, anchored gradients), forward and
forward+backward time of the chunk-parallel engine vs the token-by-token reference scan with
the same semantics, for each length T and chunk size C.
Part 2: training throughput (tokens/s of a full jitted train step) of titans_mac vs the
Transformer++ baseline with the same width, depth, sequence length and about the same number of
parameters (the baseline's MLP is widened to match).
Prints tables and writes JSON (default scripts/results/bench_memory_<device>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from zoo.config import load_config  # noqa: E402
from zoo.data import make_data  # noqa: E402
from zoo.memory import engine  # noqa: E402
from zoo.memory.spec import MemorySpec  # noqa: E402
from zoo.memory.state import initial_state  # noqa: E402
from zoo.memory.structures import init_weights  # noqa: E402
from zoo.training import Runtime, make_mesh  # noqa: E402
from zoo.training.sharding import put_global_batch  # noqa: E402


def best_time(fn, *args, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` warm calls (after one compile call)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def layer_inputs(batch, heads, t, d, spec, seed=0):
    ks = jax.random.split(jax.random.key(seed), 7)
    norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q = norm(jax.random.normal(ks[0], (batch, heads, t, d)))
    k = norm(jax.random.normal(ks[1], (batch, heads, t, d)))
    v = jax.random.normal(ks[2], (batch, heads, t, d))
    gates = dict(lr=0.1 * jax.nn.sigmoid(jax.random.normal(ks[3], (batch, heads, t))),
                 log_retention=-jax.nn.softplus(jax.random.normal(ks[4], (batch, heads, t)) - 4.0),
                 log_momentum=-jax.nn.softplus(-(jax.random.normal(ks[5], (batch, heads, t)) + 2.0)))
    init = jax.vmap(lambda key: init_weights(spec, key, d, d))(jax.random.split(ks[6], heads))
    return init, q, k, v, gates


def layer_fns(spec):
    def chunked(init, q, k, v, g):
        one = lambda i, q, k, v, g: engine.chunk(spec, None, q, k, v, g, init=i)[1]  # noqa: E731
        return jax.vmap(jax.vmap(one), in_axes=(None, 0, 0, 0, 0))(init, q, k, v, g)

    def scan(init, q, k, v, g):
        one = lambda i, q, k, v, g: engine.reference_chunked(spec, initial_state(spec, i), q, k, v, g)[1]  # noqa: E731
        return jax.vmap(jax.vmap(one), in_axes=(None, 0, 0, 0, 0))(init, q, k, v, g)

    def with_grad(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2, 3, 4)))

    return {"chunked": (jax.jit(chunked), with_grad(chunked)), "scan": (jax.jit(scan), with_grad(scan))}


def bench_layer(lengths, chunks, batch=1, heads=4, d=32, max_scan_t=8192):
    rows = []
    for c in chunks:
        spec = MemorySpec(structure="mlp", depth=2, expansion=4, chunk_size=c)
        fns = layer_fns(spec)
        for t in lengths:
            args = layer_inputs(batch, heads, t, d, spec)
            row = {"T": t, "C": c, "batch": batch, "heads": heads, "head_dim": d}
            for name, (fwd, bwd) in fns.items():
                if name == "scan" and t > max_scan_t:
                    continue
                row[f"{name}_fwd_ms"] = 1e3 * best_time(fwd, *args)
                row[f"{name}_fwd_bwd_ms"] = 1e3 * best_time(bwd, *args)
            if "scan_fwd_ms" in row:
                row["fwd_speedup"] = row["scan_fwd_ms"] / row["chunked_fwd_ms"]
                row["fwd_bwd_speedup"] = row["scan_fwd_bwd_ms"] / row["chunked_fwd_bwd_ms"]
            rows.append(row)
            print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    return rows


def train_throughput(config: str, overrides: list[str], steps: int = 5) -> dict:
    cfg = load_config(ROOT / config, overrides=overrides)
    rt = Runtime(cfg, make_mesh(dataclasses.replace(cfg.mesh, data=1), jax.devices()[:1]))
    state = rt.init_state()
    batch = put_global_batch({k: v[None] for k, v in next(make_data(cfg).train).items()}, rt.mesh, batch_dim=1)
    state, _ = rt.train_step(state, batch)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = rt.train_step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return {"model": cfg.model.name, "params": rt.num_params(), "seq_len": cfg.data.seq_len,
            "batch": cfg.data.batch_size, "step_s": seconds,
            "tokens_per_s": cfg.data.batch_size * cfg.data.seq_len / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--chunks", default="16,64")
    parser.add_argument("--seq-len", type=int, default=256, help="sequence length of the model comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = jax.devices()[0]
    device_name = getattr(device, "device_kind", device.platform)
    print(f"device: {device_name} ({jax.device_count()} x {device.platform}), jax {jax.__version__}")

    print("Part 1: Titans memory layer, chunked engine vs token-by-token scan")
    layer = bench_layer([int(x) for x in args.lengths.split(",")], [int(x) for x in args.chunks.split(",")])

    print(f"Part 2: train-step throughput at seq_len {args.seq_len}")
    common = ["train.grad_accum=1", f"data.seq_len={args.seq_len}", "data.batch_size=8",
              f"data.align_documents={args.seq_len}", "model.d_model=64", "model.num_layers=2", "model.num_heads=4"]
    # the baseline's SwiGLU is widened so both models have about the same parameter count
    models = [train_throughput("configs/titans/mac_tiny.yaml", common),
              train_throughput("configs/transformer/tiny.yaml", [c for c in common if "align" not in c]
                               + ["model.mlp_dim=320"])]
    for m in models:
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    ratio = models[0]["tokens_per_s"] / models[1]["tokens_per_s"]
    print(f"  titans_mac / transformer tokens/s = {ratio:.3f}")

    out = Path(args.out) if args.out else ROOT / "scripts" / "results" / f"bench_memory_{device.platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device_name, "platform": device.platform, "host": platform.node(), "jax": jax.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "layer": layer, "models": models,
        "mac_over_transformer_tokens_per_s": ratio}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

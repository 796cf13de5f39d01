#!/usr/bin/env python
"""Streaming a long context: cache size and time per token vs context length, recurrent vs attention.

For each model and context length T, feeds a random [1, T] sequence through `zoo.streaming.stream_nll`
in segments of --segment-len tokens (jit, warm, best of --repeats) and measures the cache the model
carries (bytes of `init_cache(1, T)`): a memory model's state is independent of T, a full-attention
Transformer's KV cache grows linearly. Prints a table and writes JSON.

    python scripts/bench_streaming.py --lengths 1k,4k,16k --output scripts/results/bench_streaming_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo
from zoo.config import MemoryConfig, ModelConfig
from zoo.evaluation.settings import parse_lengths
from zoo.streaming import stream_nll

MODELS = ("transformer", "titans_lmm", "titans_mag")


def build(name: str, d_model: int) -> nnx.Module:
    cfg = ModelConfig(name=name, vocab_size=1024, d_model=d_model, num_layers=2, num_heads=4,
                      sliding_window=256 if name != "transformer" else 0,
                      memory=MemoryConfig(chunk_size=16, expansion=2))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def cache_bytes(model: nnx.Module, length: int) -> int:
    cache = jax.eval_shape(lambda: model.init_cache(1, length))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def time_stream(model, length: int, segment_len: int, repeats: int) -> float:
    tokens = jax.random.randint(jax.random.key(0), (1, length), 0, 1024, jnp.int32)
    stream_nll(model, tokens, tokens, segment_len).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        stream_nll(model, tokens, tokens, segment_len).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1k,4k,16k")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--segment-len", type=int, default=512)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--output", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    lengths = parse_lengths(args.lengths)
    rows = []
    for name in args.models.split(","):
        model = build(name, args.d_model)
        for length in lengths:
            seconds = time_stream(model, length, args.segment_len, args.repeats)
            rows.append({"model": name, "length": length, "segment_len": args.segment_len,
                         "cache_bytes": cache_bytes(model, length), "seconds": seconds,
                         "us_per_token": 1e6 * seconds / length})
            r = rows[-1]
            print(f"{name:12s} T={length:7d}  cache {r['cache_bytes'] / 2**20:9.3f} MiB  "
                  f"{r['seconds']:8.3f} s  {r['us_per_token']:8.1f} us/token", flush=True)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
                                   "jax": jax.__version__, "d_model": args.d_model, "rows": rows}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Quantized KV caches (`model.kv_cache`, kernels.quantized_attention): memory per token, decode
latency against a bf16 cache, and the perplexity of a trained model read back through each
codec. Prints three tables, writes JSON.

    python scripts/bench_quantized_attention.py                                   # CPU: 4k and 32k caches
    python scripts/bench_quantized_attention.py --lengths 4k,32k,128k --backends xla,pallas   # GPU

Part 1, memory: bytes the cache stores per token and KV head (keys + values: codes, scales, zero
points, norms), effective bits per element, and compression against bf16, at head_dim 64 and 128.
Part 2, latency: one decode step of one attention layer (batch `--batch`, 32 query heads on 8 KV
heads, head_dim 128) over a cache of each length: `jax.nn.dot_product_attention` over a bf16 cache
vs `quantized_attention` per backend (the fastest of `--repeats` warm calls).
Part 3, quality: a Transformer++ (d_model 128, 2 heads of 64, 2 layers) trained `--steps` steps on
the built-in corpus (256-token rows); held-out perplexity through each cache format (recent
window 0, 32 and 128 tokens) against the float cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_memory import best_time  # noqa: E402  (scripts/: the fastest of the warm calls)

import zoo  # noqa: E402
from kernels.quantized_attention import cache as qcache  # noqa: E402
from kernels.quantized_attention.attention import quantized_attention  # noqa: E402
from zoo.data.pipeline import make_data  # noqa: E402
from zoo.evaluation.perplexity import cached_perplexity  # noqa: E402
from zoo.evaluation.settings import parse_length  # noqa: E402


def formats(head_dim: int) -> list[zoo.KVCacheFormat]:
    """The quantized formats measured: the outlier split puts a quarter of the channels at bits + 1
    (the paper's 32 of 128)."""
    out = [zoo.KVCacheFormat(dtype="int8"), zoo.KVCacheFormat(dtype="int4_kivi")]
    out += [zoo.KVCacheFormat(dtype="turbo_mse", bits=b) for b in (4, 3, 2)]
    out += [zoo.KVCacheFormat(dtype="turbo_mse", bits=b, outliers=head_dim // 4) for b in (3, 2)]
    out += [zoo.KVCacheFormat(dtype="turbo_prod", bits=b) for b in (4, 3, 2)]
    return out


def fmt_name(fmt: zoo.KVCacheFormat) -> str:
    return fmt.codecs()[0]


def memory_rows() -> list[dict]:
    rows = []
    for d in (64, 128):
        for fmt in formats(d):
            layout = qcache.make_layout(*fmt.codecs(), kv_heads=1, head_dim=d, max_len=4096)
            per_token = qcache.stored_bytes_per_token(layout)
            rows.append(dict(head_dim=d, format=fmt_name(fmt), bytes_per_token=per_token,
                             bits_per_element=per_token * 8 / (2 * d), vs_bf16=(2 * 2 * d) / per_token))
    return rows


def latency_rows(lengths, backends, batch, repeats) -> list[dict]:
    hq, hkv, d = 32, 8, 128
    rows = []
    for length in lengths:
        keys = jax.random.split(jax.random.key(length), 3)
        k = jax.random.normal(keys[0], (batch, length, hkv, d), jnp.bfloat16)
        v = jax.random.normal(keys[1], (batch, length, hkv, d), jnp.bfloat16)
        q = jax.random.normal(keys[2], (batch, 1, hq, d), jnp.bfloat16)
        bf16 = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v))
        base = best_time(bf16, q, k, v, repeats=repeats)
        rows.append(dict(length=length, format="bf16", backend="xla", ms=base * 1e3, vs_bf16=1.0))
        print(json.dumps(rows[-1]), flush=True)
        for fmt in [zoo.KVCacheFormat(dtype="int8"), zoo.KVCacheFormat(dtype="int4_kivi"),
                    zoo.KVCacheFormat(dtype="turbo_mse", bits=4),
                    zoo.KVCacheFormat(dtype="turbo_mse", bits=3, outliers=32),
                    zoo.KVCacheFormat(dtype="turbo_prod", bits=3)]:
            layout = qcache.make_layout(*fmt.codecs(), kv_heads=hkv, head_dim=d, max_len=length + 1)
            cache = jax.jit(lambda k, v, layout=layout: qcache.write(layout, qcache.init(layout, batch, jnp.bfloat16),
                                                                       k, v, 0))(k, v)
            for backend in backends:
                step = jax.jit(lambda q, cache, k1, v1, layout=layout, backend=backend: quantized_attention(
                    q, jnp.array([length]), cache, layout, k1, v1, length, backend=backend))
                seconds = best_time(step, q, cache, k[:, :1], v[:, :1], repeats=repeats)
                rows.append(dict(length=length, format=fmt_name(fmt), backend=backend, ms=seconds * 1e3,
                                 vs_bf16=seconds / base))
                print(json.dumps(rows[-1]), flush=True)
            del cache
    return rows


def quality_rows(steps: int) -> tuple[float, list[dict]]:
    overrides = ["model.d_model=128", "model.num_heads=2", "data.seq_len=256", f"train.steps={steps}",
                 f"checkpoint.every_steps={steps}", "train.log_every=100000"]
    cfg = zoo.load_config(str(ROOT / "configs/transformer/tiny.yaml"), overrides=overrides)
    workdir = tempfile.mkdtemp(prefix="bench_kv_")
    zoo.train(cfg, workdir)
    model, cfg = zoo.load_checkpoint(workdir)
    batches = make_data(cfg).heldout_batches(8, 2)

    def perplexity(fmt):
        zoo.set_kv_cache(model, fmt)
        return cached_perplexity(model, batches, cfg.data.seq_len)

    base = perplexity(zoo.KVCacheFormat())
    rows = []
    for fmt in formats(64):
        for recent in (0, 32, 128):
            ppl = perplexity(dataclasses.replace(fmt, recent=recent))
            rows.append(dict(format=fmt_name(fmt), recent=recent, perplexity=ppl,
                             change_percent=100 * (ppl / base - 1)))
            print(json.dumps(rows[-1]), flush=True)
    return base, rows


def table(rows, columns) -> str:
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    for row in rows:
        lines.append(" | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="4k,32k", help="cache lengths of the latency part (k = 1024)")
    p.add_argument("--backends", default="xla", help="quantized_attention backends timed, comma-separated")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=600, help="training steps of the quality model (0: skip)")
    p.add_argument("--out", default=None,
                   help="JSON path (default scripts/results/bench_quantized_attention_<platform>.json)")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    memory = memory_rows()
    print(table(memory, ["head_dim", "format", "bytes_per_token", "bits_per_element", "vs_bf16"]), flush=True)
    lengths = [parse_length(x) for x in args.lengths.split(",") if x]
    latency = latency_rows(lengths, args.backends.split(","), args.batch, args.repeats)
    print(table(latency, ["length", "format", "backend", "ms", "vs_bf16"]), flush=True)
    base, quality = quality_rows(args.steps) if args.steps else (None, [])
    if quality:
        print(f"float cache perplexity {base:.4f}")
        print(table(quality, ["format", "recent", "perplexity", "change_percent"]), flush=True)
    out = Path(args.out or ROOT / f"scripts/results/bench_quantized_attention_{dev.platform}.json")
    out.write_text(json.dumps(dict(device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
                                   host=platform.machine(), args=vars(args), memory=memory, latency=latency,
                                   float_cache_perplexity=base, quality=quality), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

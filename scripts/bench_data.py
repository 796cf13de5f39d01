#!/usr/bin/env python
"""The shard-store loader's throughput alone (tokens/s it hands to the training step), beside the
training step's own tokens/s for the 170M configs, on this machine. The loader must never be the
bottleneck. Prints a table, writes JSON (default scripts/results/bench_data_<platform>.json).

    python scripts/bench_data.py                                  # builtin-corpus store, CPU
    python scripts/bench_data.py --store stores/fineweb_edu --train-models ''

The store defaults to the built-in corpus prepared with the quickstart tokenizer (made once
under --work). Each loader row reads `--batches` shuffled global batches of the 170M configs'
shapes (data.seq_len 4096, aligned to 16 for the memory models), whole and as one process's half
(`next_rows`, as on a two-host job). The training rows time one optimizer step of each model
at the 170M size (scripts/bench_train.py's `speed`, one sequence of --train-seq tokens).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def loader_rows(store: Path, seq: int, batch: int, align: int, batches: int) -> list[dict]:
    import numpy as np

    from zoo.data import load_tokenizer
    from zoo.data.iterator import StoreBatchIterator
    from zoo.data.store import ShardStore

    opened = ShardStore(store)
    tok = load_tokenizer(store)
    rows = opened.rows("train", seq, align, tok.bos_id, tok.eos_id, tok.pad_id)
    out = []
    for share, positions in (("whole batch", None), ("half (one of 2 processes)", np.arange(batch // 2))):
        it = StoreBatchIterator(rows, batch, seed=0)
        next(it)  # opens the files
        start = time.perf_counter()
        for _ in range(batches):
            if positions is None:
                next(it)
            else:
                it.next_rows(positions)
        seconds = time.perf_counter() - start
        n = batch if positions is None else len(positions)
        out.append(dict(kind="loader", share=share, seq=seq, batch=batch, align=align, rows=rows.num_rows,
                        tokens_per_s=batches * n * seq / seconds, ms_per_batch=1e3 * seconds / batches))
    return out


def train_rows(models: list[str], seq: int) -> list[dict]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_train import speed

    return [dict(kind="train step", model=m, **{k: v for k, v in speed(m, "170m", seq, 1, "block", 2).items()
                                                 if k in ("seq", "batch", "tokens_per_s", "step_s")})
            for m in models]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="a prepared store (default: the built-in corpus, made once)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_data"), help="where the default store goes")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128, help="global batch (170M configs: 128)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--train-models", default="transformer,titans_lmm")
    p.add_argument("--train-seq", type=int, default=2048)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)

    import jax

    from zoo.config import load_config
    from zoo.data.prepare import prepare_store

    store = Path(args.store) if args.store else Path(args.work) / "builtin_store"
    if not args.store:
        prepare_store(load_config(ROOT / "configs" / "quickstart.yaml"), store, shard_tokens=1 << 20, progress=False)
    rows = []
    for align in (1, 16):
        rows += loader_rows(store, args.seq, args.batch, align, args.batches)
    models = [m for m in args.train_models.split(",") if m]
    rows += train_rows(models, args.train_seq) if models else []
    print("| what | seq | batch | tokens/s | ms per batch |\n|---|---|---|---|---|")
    for r in rows:
        what = (f"loader, {r['share']}, align {r['align']}" if r["kind"] == "loader"
                else f"train step, {r['model']} 170M, remat block")
        ms = f"{r['ms_per_batch']:.1f}" if "ms_per_batch" in r else f"{1e3 * r['step_s']:.0f} (step)"
        print(f"| {what} | {r['seq']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {ms} |")
    out = Path(args.output or ROOT / "scripts" / "results" / f"bench_data_{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "platform": platform.platform(),
                               "store": str(store), "command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

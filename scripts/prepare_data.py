#!/usr/bin/env python
"""Tokenize a config's corpus once into a shard store; train from it with data.shards_dir.

    python scripts/prepare_data.py --config configs/titans/lmm_170m.yaml --out stores/fineweb_edu
    python train.py --config configs/titans/lmm_170m.yaml --set data.shards_dir=stores/fineweb_edu

The config's data section names the source (builtin, files or hf), the tokenizer, the held-out
fraction and the seed; --out defaults to its data.shards_dir. Rerun the same command after an
interruption: finished shards are kept and the rest is written. Format and split rules:
zoo/data/store.py and zoo/data/prepare.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config whose data section names the corpus")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--out", default=None, help="store directory (default: the config's data.shards_dir)")
    p.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard (default 64M)")
    p.add_argument("--workers", type=int, default=0, help="tokenizer threads (default: the cores, at most 16)")
    p.add_argument("--tokenizer-documents", type=int, default=100_000,
                   help="hf source, SentencePiece: train the tokenizer on this many training documents")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from zoo.config import ConfigError, load_config
    from zoo.data import DataError
    from zoo.data.prepare import DEFAULT_SHARD_TOKENS, prepare_store

    try:
        cfg = load_config(args.config, overrides=args.set)
        out = args.out or cfg.data.shards_dir
        if not out:
            raise ConfigError("give --out DIR or set data.shards_dir in the config")
        manifest = prepare_store(cfg, out, shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
                                 workers=args.workers, tokenizer_documents=args.tokenizer_documents,
                                 progress=not args.quiet)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"prepare_data.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    splits = manifest["splits"]
    print(f"store {out}: " + ", ".join(
        f"{s} {v['documents']:,} documents / {v['tokens']:,} tokens in {len(v['shards'])} shards"
        for s, v in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

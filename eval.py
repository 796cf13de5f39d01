#!/usr/bin/env python
"""Evaluate a training run's checkpoint: prints tables, writes JSON and PNG plots.

    python eval.py --workdir runs/quickstart --tasks ppl,s_niah_1,babilong_qa1,mqar --lengths 1k,4k
    python eval.py --workdir runs/quickstart --tasks niah --depths 0,50,100 --num-samples 16
    python eval.py --compare runs/a runs/b --output compare/

Tasks: ppl, ppl_by_position, s_niah_1, s_niah_2, s_niah_3, mk_niah, mv_niah, mq_niah,
babilong_qa1..babilong_qa5, mqar; groups: niah, babilong. Lengths take k (1024) and m suffixes.
Results go to <workdir>/eval/step_<N>.json and PNGs to <workdir>/eval/step_<N>/.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="the --workdir of a train.py run")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--tasks", default="ppl", help="comma-separated task names or groups (default: ppl)")
    p.add_argument("--lengths", default=None, help="prompt lengths in tokens, e.g. 1k,4k,16k (default: per task)")
    p.add_argument("--depths", default=None, help="needle depths, fractions or percent (default: 0,25,50,75,100)")
    p.add_argument("--num-samples", type=int, default=8, help="samples per task x length x depth (default: 8)")
    p.add_argument("--max-length", default=None, help="skip lengths above this (e.g. 32k)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per device call (default: 8)")
    p.add_argument("--segment-len", default="2k", help="stream long contexts in segments of this many tokens")
    p.add_argument("--haystack", default=None, help="a text file for essay haystacks (default: built-in corpus)")
    p.add_argument("--babilong-data", default=None, metavar="DIR",
                   help="official BABILong splits as DIR/<length>/<qa>.jsonl (or .json/.parquet), used where present")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument("--kv-cache", default="", metavar="DTYPE[:BITS]",
                   help="decode from this KV cache: bfloat16, float32, int8, int4_kivi, turbo_mse:B, turbo_prod:B "
                        "(default: the run's model.kv_cache)")
    p.add_argument("--kv-recent", type=int, default=0, help="with --kv-cache: newest tokens kept in full precision")
    p.add_argument("--no-plots", action="store_true", help="write no PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--compare", nargs="+", metavar="DIR", default=None,
                   help="draw these workdirs' (or result JSONs') newest results on one plot")
    p.add_argument("--output", default=None,
                   help="JSON path (default <workdir>/eval/step_<N>.json); with --compare: the PNG folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.compare is None and not args.workdir:
        print("eval.py: give --workdir DIR (a train.py run) or --compare DIR1 DIR2 ...", file=sys.stderr)
        return 2

    from zoo.config import ConfigError
    from zoo.data import DataError
    from zoo.evaluation import EvalSettings, format_tables, parse_depths, parse_lengths, parse_tasks, run
    from zoo.evaluation.compare import compare
    from zoo.evaluation.settings import parse_length
    from zoo.training import CheckpointError

    try:
        if args.compare is not None:
            table, files = compare(args.compare, args.output or "eval_compare")
            print(table)
        else:
            settings = EvalSettings(
                lengths=parse_lengths(args.lengths), depths=parse_depths(args.depths), num_samples=args.num_samples,
                max_length=None if args.max_length is None else parse_length(args.max_length),
                batch_size=args.batch_size, segment_len=parse_length(args.segment_len), haystack=args.haystack,
                babilong_data=args.babilong_data, seed=args.seed, progress=not args.quiet, kv_cache=args.kv_cache,
                kv_recent=args.kv_recent)
            records, files = run(args.workdir, parse_tasks(args.tasks), step=args.step, output=args.output,
                                 settings=settings, make_plots=not args.no_plots)
            print(format_tables(records))
    except (ValueError, ConfigError, CheckpointError, DataError, FileNotFoundError) as e:
        print(f"eval.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Evaluate a training run's checkpoint on the devices present; prints a table, writes JSON.

    python eval.py --workdir runs/quickstart [--step N] --tasks ppl [--output results.json]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the --workdir of a train.py run")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--tasks", default="ppl", help="comma-separated task names (available: ppl)")
    parser.add_argument("--output", default=None, help="JSON path (default: <workdir>/eval/step_<N>.json)")
    args = parser.parse_args(argv)

    from zoo.config import ConfigError
    from zoo.data import DataError
    from zoo.evaluation import format_table, parse_tasks, run
    from zoo.training import CheckpointError

    try:
        tasks = parse_tasks(args.tasks)
        records, path = run(args.workdir, tasks, step=args.step, output=args.output)
    except (ValueError, ConfigError, CheckpointError, DataError, FileNotFoundError) as e:
        print(f"eval.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(format_table(records))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Pretrain any registered model from a YAML config; rerun the same command to resume.

    python train.py --config configs/quickstart.yaml [--set train.steps=100 ...] [--workdir runs/qs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one config value (repeatable), e.g. --set train.steps=100")
    parser.add_argument("--workdir", default=None,
                        help="where checkpoints, metrics and the resolved config go (default: runs/<config name>)")
    args = parser.parse_args(argv)

    from zoo.config import ConfigError, load_config
    from zoo.training import CheckpointError, NonFiniteLossError, train

    try:
        cfg = load_config(args.config, overrides=args.set)
    except ConfigError as e:
        print(f"train.py: config error: {e}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
    try:
        result = train(cfg, workdir)
    except (ConfigError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"train.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if result.signum is not None:
        return 128 + result.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())

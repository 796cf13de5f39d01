"""One training run over a shard store; prints its peak resident memory (run by
test_store_training.py, not by pytest)."""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"


def main():
    workdir, overrides = sys.argv[1], sys.argv[2:]
    from zoo.config import load_config
    from zoo.training import train

    result = train(load_config(None, overrides=overrides), workdir)
    # VmHWM: this process image's peak resident set (ru_maxrss would carry the forking parent's peak)
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    peak_mb = int(status["VmHWM"].split()[0]) / 1024  # kB
    print("RESULT " + json.dumps({"step": result.step, "peak_rss_mb": peak_mb}), flush=True)


if __name__ == "__main__":
    main()

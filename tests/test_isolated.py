"""The tests under tests/isolated/ (the quantized KV cache: its kernels and its models), run in a
fresh process. With jaxlib 0.10.2, running them inside a shared pytest worker after other test
files made XLA compiles in that worker crash (5 full runs of 5; never in a fresh process, never
without them): tests/conftest.py keeps them out of the shared workers and this test runs them
whole, failing with their output if any of them fails."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_isolated_suite_in_its_own_process():
    env = dict(os.environ, MEMZOO_ISOLATED="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                             "tests/isolated"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    tail = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "no tests ran" not in result.stdout, tail

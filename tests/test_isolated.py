"""The tests under tests/isolated/ (the quantized KV cache: its kernels and its models), run in a
fresh process. With jaxlib 0.10.2, running them inside a shared pytest worker after other test
files made XLA compiles in that worker crash (5 full runs of 5; never in a fresh process, never
without them): tests/conftest.py keeps them out of the shared workers and this test runs them
whole, failing with their output if any of them fails (one file per test module here, so the two
pytest workers can run them side by side)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_isolated(path: str) -> None:
    """Runs the test file `path` (under tests/isolated/) in a fresh pytest process; fails with its output."""
    env = dict(os.environ, MEMZOO_ISOLATED="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", path],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    tail = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "no tests ran" not in result.stdout, tail


def test_quantized_attention_kernels_in_their_own_process():
    run_isolated("tests/isolated/test_quantized_attention.py")

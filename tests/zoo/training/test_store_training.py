"""Training from a shard store: memory that does not grow with the store. (Exact resume across a
shard boundary: tests/zoo/data/test_store.py; the loop restores every iterator the same way.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

from zoo.data.prepare import prepare_store

ROOT = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).with_name("rss_worker.py")


def _corpus(folder: Path, megabytes: int) -> list[str]:
    """`megabytes` of text as 100 KB .txt files (bytes tokenizer: one token per byte)."""
    folder.mkdir()
    block = "".join(chr(97 + (i * 7919) % 26) + (" " if i % 6 == 5 else "") for i in range(100_000))[:100_000]
    paths = []
    for i in range(megabytes * 10):
        path = folder / f"doc{i:05d}.txt"
        path.write_text(block[i % 97:] + block[:i % 97])
        paths.append(str(path))
    return paths


def test_peak_memory_does_not_grow_with_the_store(tiny_cfg, tmp_path):
    """The same run over stores of 4M and 40M tokens (8 MB and 80 MB of uint16 on disk; the
    in-memory pipeline would hold 16 bytes per token of packed arrays, 640 MB for the large one):
    the peak resident set may grow by at most 32 MB, under the 46 MB a memory map instead of pread
    grew by (its touched pages stay resident). The two runs compile side by side, and their peaks
    differ by up to 20 MB either way with nothing else different (28 MB with glibc's per-thread
    malloc arenas, so the workers use one)."""
    base = ["train.steps=4", "data.source=files", "data.heldout_fraction=0.01", "data.max_documents=0",
            "eval.max_batches=1"]
    runs = {}
    for megabytes in (4, 40):
        paths = _corpus(tmp_path / f"corpus{megabytes}", megabytes)
        files = "[" + ",".join(paths) + "]"
        cfg = tiny_cfg(*base, f"data.paths={files}")
        prepare_store(cfg, tmp_path / f"store{megabytes}", cache_dir=tmp_path / "cache", progress=False)
        runs[megabytes] = [*base, f"data.paths={files}", f"data.shards_dir={tmp_path / f'store{megabytes}'}"]
    from tests.zoo.training.conftest import TINY

    # one malloc arena per process: with one per thread the peak varied by up to 28 MB between
    # identical runs
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "1"}
    env.pop("XLA_FLAGS", None)
    procs = {mb: subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"run{mb}"), *TINY, *o],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
             for mb, o in runs.items()}
    peaks = {}
    for mb, p in procs.items():
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        assert result["step"] == 4
        peaks[mb] = result["peak_rss_mb"]
    assert peaks[40] - peaks[4] < 32, peaks

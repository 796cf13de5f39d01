"""Two processes on localhost (jax.distributed, CPU collectives) train over one 4-device mesh."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax

from zoo.data.prepare import prepare_store
from zoo.data.store import PackedRows
from zoo.training import train

WORKER = Path(__file__).with_name("multihost_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tiny_cfg, tiny_overrides, tmp_path, monkeypatch):
    """Over a shard store: each process reads only its half of every batch (disjoint rows) and
    the losses equal one process training on all four devices."""
    store = tmp_path / "store"
    prepare_store(tiny_cfg(), store, shard_tokens=20_000, cache_dir=tmp_path / "cache", progress=False)
    overrides = tiny_overrides + ["train.steps=3", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=1",
                                  "data.source=shards", f"data.shards_dir={store}"]
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), str(tmp_path / "multi"), *overrides],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
             for i in range(2)]
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=400)
        assert p.returncode == 0, out[-3000:]
        outputs.append(out)
    results = [json.loads(line[len("RESULT "):]) for out in outputs for line in out.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 2
    single_rows = []
    original = PackedRows.read
    monkeypatch.setattr(PackedRows, "read", lambda self, rows: (
        single_rows.append(sorted(int(r) for r in rows)) if self.split == "train" else None, original(self, rows))[1])
    single = train(tiny_cfg(*overrides[len(tiny_overrides):]), tmp_path / "single", devices=jax.devices()[:4])
    for r in results:
        assert r["step"] == 3
        for step, loss in r["losses"].items():
            assert abs(loss - single.losses[int(step)]) < 1e-5
    assert len(single_rows) == 3 and all(len(rows) == 8 for rows in single_rows)  # batch_size 8
    for step, whole in enumerate(single_rows):
        mine, theirs = results[0]["rows"][step], results[1]["rows"][step]
        assert len(mine) == len(theirs) == 4 and not set(mine) & set(theirs)
        assert sorted(mine + theirs) == whole
    assert sorted((tmp_path / "multi" / "checkpoints").iterdir())  # a checkpoint was written jointly

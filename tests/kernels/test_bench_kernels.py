"""`scripts/bench_kernels.py` end to end on CPU (its smoke grid, one op): the correctness check
agrees with the reference, every timing row has its numbers and its ratio to xla, and the JSON
holds what the tables printed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_kernels.py"


def test_bench_kernels_smoke_run(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--ops", "gated_delta_rule", "--repeats", "1", "--out", str(tmp_path / "k.json")])
    report = json.loads(Path(out).read_text())
    assert report["platform"] == "cpu" and report["skipped"] == []
    assert {r["backend"] for r in report["correctness"]} == {"xla", "pallas"}
    assert all(r["relative_error"] < 1e-5 and r["max_abs_error"] > 0 for r in report["correctness"])
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"xla", "pallas"}
    for r in rows.values():
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_tflops"] > 0 and r["fwd_gbps"] > 0
    assert abs(rows["pallas"]["fwd_speedup_vs_xla"] - rows["xla"]["fwd_ms"] / rows["pallas"]["fwd_ms"]) < 1e-9

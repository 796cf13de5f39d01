#!/usr/bin/env python
"""Prints README's model table (Markdown) from `zoo.registry.models()`, with the MQAR recall
column from `scripts/results/bench_recall_cpu.json` (written by scripts/bench_recall.py).

    python scripts/model_table.py            # print
    python scripts/model_table.py --check    # exit 1 if README.md's table is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"
RECALL = ROOT / "scripts" / "results" / "bench_recall_cpu.json"


def recall_cells() -> dict[str, str]:
    """Model name -> "tiny / hard" median held-out MQAR accuracy at the last step of the bench."""
    if not RECALL.is_file():
        return {}
    import json

    summary = json.loads(RECALL.read_text())["summary"]
    by_model: dict[str, dict[str, float]] = {}
    for row in summary:
        last = max(row["median"], key=int)
        by_model.setdefault(row["model"], {})[row["setting"]] = row["median"][last]
    return {m: " / ".join(f"{acc[s]:.2f}" if s in acc else "—" for s in ("tiny", "hard")) for m, acc in by_model.items()}


def model_table() -> str:
    from zoo import registry

    recall = recall_cells()
    rows = ["| name | family | paper | tiny config | MQAR recall (tiny / hard) | status |", "|---|---|---|---|---|---|"]
    for name, info in sorted(registry.models().items()):
        rows.append(f"| `{name}` | {info.family} | {info.paper} | `{info.tiny_config}` | "
                    f"{recall.get(name, '—')} | {info.status} |")
    return "\n".join(rows)


def readme_table(readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip()


def main() -> int:
    table = model_table()
    if "--check" in sys.argv:
        current = readme_table((ROOT / "README.md").read_text())
        if current != table:
            print("README.md's model table is out of date; replace it with:\n" + table)
            return 1
        return 0
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Prints README's model table (Markdown) from `zoo.registry.models()`.

    python scripts/model_table.py            # print
    python scripts/model_table.py --check    # exit 1 if README.md's table is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"


def model_table() -> str:
    from zoo import registry

    rows = ["| name | family | paper | tiny config | status |", "|---|---|---|---|---|"]
    for name, info in sorted(registry.models().items()):
        rows.append(f"| `{name}` | {info.family} | {info.paper} | `{info.tiny_config}` | {info.status} |")
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

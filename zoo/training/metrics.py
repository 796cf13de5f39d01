"""Metric lines on stdout (with a progress bar) and one JSON record per line in the workdir."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def progress_bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * done / max(total, 1):5.1f}%"


class MetricsLogger:
    """Writes `metrics.jsonl` in the workdir and prints a line per record (process 0 only)."""

    def __init__(self, workdir: Path, *, enabled: bool = True, show_progress: bool = True, stream=None):
        self.enabled, self.show_progress = enabled, show_progress
        self.stream = stream or sys.stdout
        self.path = Path(workdir) / "metrics.jsonl"
        self.start = time.time()

    def log(self, record: dict, *, total_steps: int | None = None) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
                  for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        parts = []
        if total_steps and self.show_progress and "step" in record:
            parts.append(progress_bar(record["step"], total_steps))
        for k, v in record.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        print(" ".join(parts), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

"""Metric lines on stdout (with a progress bar), one JSON record per line in the workdir
(`metrics.jsonl`) and the same numbers as TensorBoard scalars (`<workdir>/tensorboard/`, through
tensorboardX; skipped with a note when it is not installed)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def progress_bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * done / max(total, 1):5.1f}%"


TENSORBOARD_DIR = "tensorboard"


def tensorboard_writer(workdir: Path, stream=None):
    """A tensorboardX SummaryWriter for `<workdir>/tensorboard`, or None (with a note) without it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        print("memzoo: tensorboardX is not installed (pip install tensorboardX); no TensorBoard files",
              file=stream or sys.stderr, flush=True)
        return None
    return SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR), flush_secs=30)


def write_scalars(writer, record: dict, step: int, prefix: str = "") -> None:
    """Every number of `record` (bools and the step excluded) as a scalar at `step`."""
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(prefix + key, value, step)


def read_scalars(folder: str | Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the TensorBoard event files in `folder` (TFRecord framing around
    Event protos; reads what `write_scalars` wrote without TensorFlow or TensorBoard)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            n = int.from_bytes(data[i:i + 8], "little")
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


class MetricsLogger:
    """Writes `metrics.jsonl` and TensorBoard scalars in the workdir and prints a line per record
    (process 0 only). Call `close()` at the end (it flushes the TensorBoard file)."""

    def __init__(self, workdir: Path, *, enabled: bool = True, show_progress: bool = True, stream=None,
                 tensorboard: bool = True):
        self.enabled, self.show_progress = enabled, show_progress
        self.stream = stream or sys.stdout
        self.path = Path(workdir) / "metrics.jsonl"
        self.start = time.time()
        self.writer = tensorboard_writer(workdir, self.stream) if enabled and tensorboard else None

    def log(self, record: dict, *, total_steps: int | None = None) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
                  for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            write_scalars(self.writer, record, int(record["step"]))
        parts = []
        if total_steps and self.show_progress and "step" in record:
            parts.append(progress_bar(record["step"], total_steps))
        for k, v in record.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        print(" ".join(parts), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

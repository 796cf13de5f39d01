"""Workarounds for XLA bugs measured here, applied through XLA_FLAGS before the first backend
starts (`zoo` applies them on import; flags the user already set win)."""

from __future__ import annotations

import importlib.metadata
import os

# jaxlib 0.10.x, CPU: the concurrency-optimized scheduler deadlocks some compiled programs: Gated
# DeltaNet's training step at batch 8 x 64 tokens (mqar_tiny) never returns, every thread waiting
# on a futex; batch 4 and 16 run. With the scheduler off it runs (docs/fidelity.md, "XLA on CPU").
CPU_SCHEDULER = "xla_cpu_enable_concurrency_optimized_scheduler"


def apply_xla_workarounds(environ=os.environ) -> None:
    """Turns the CPU concurrency-optimized scheduler off on jaxlib 0.10.x unless XLA_FLAGS sets it."""
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    flags = environ.get("XLA_FLAGS", "")
    if version.startswith("0.10.") and CPU_SCHEDULER not in flags:
        environ["XLA_FLAGS"] = f"{flags} --{CPU_SCHEDULER}=false".strip()

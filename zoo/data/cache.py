"""Where the data package keeps derived files (trained tokenizers, HF datasets' Arrow cache).

Layout under the cache root (`$MEMZOO_CACHE`, else `~/.cache/memzoo`):

    tokenizers/<sha256>.model    SentencePiece models, named by the hash of their training input
    hf_datasets/                 HF `datasets` cache for local json / parquet files
    builtin/<key>.json           the extracted built-in corpus (zoo.data.builtin)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    """The memzoo cache root: `$MEMZOO_CACHE` if set (and non-empty), else `~/.cache/memzoo`."""
    env = os.environ.get("MEMZOO_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memzoo"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and `os.replace`.

    Several processes (hosts of one job, or parallel test workers) may build the same cache entry
    at once; each writes identical bytes and the rename makes sure no reader ever sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

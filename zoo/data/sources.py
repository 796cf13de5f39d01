"""Where documents come from: the built-in corpus, local files or a HF hub dataset; and the
deterministic train / held-out split by document.

A document is a `str`. `load_documents(data_cfg)` returns them in a fixed order:
  builtin  the built-in corpus (`zoo.data.builtin`)
  files    `data_cfg.paths` in the given order: `.txt` -> one document per file;
           `.jsonl` / `.json` / `.parquet` -> one document per row, the text in
           `data_cfg.text_field` (read through HF `datasets`, offline)
  hf       `data_cfg.hf_name` streamed from the hub, the first `max_documents` rows
Empty and whitespace-only documents are dropped; `max_documents > 0` keeps the first N.
HF `datasets` is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from zoo.data.builtin import builtin_corpus
from zoo.data.errors import DataError

__all__ = [
    "DATASET_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "builtin_corpus",
    "load_documents",
    "heldout_mask",
    "split_documents",
    "stream_hub_documents",
]

TEXT_EXTENSIONS = (".txt",)
DATASET_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _import_datasets(why: str):
    """HF `datasets`, imported on first use (the GPU images and pure-model users lack it)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{why} needs the HF `datasets` package, which is not installed; run "
                        "`pip install datasets` (or use .txt files / data.source=builtin)"
                        ) from None
    return datasets


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Keeps HF `datasets` (and `huggingface_hub`) off the network while it reads local files.

    `HF_DATASETS_OFFLINE=1` alone is not enough: both libraries read it once, at import (users
    report local loads still making requests, huggingface/datasets#6088). So the flags they read
    at call time are switched too, and everything is restored afterwards, leaving a later
    data.source=hf load in the same process online.
    """
    datasets = _import_datasets("reading local .jsonl / .json / .parquet files")
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved_flags = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    os.environ.update({k: "1" for k in saved_env})
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    datasets.utils.disable_progress_bars()  # a few local files: the bars are only noise in the log
    try:
        yield
    finally:
        if not bars_were_off:
            datasets.utils.enable_progress_bars()
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved_flags
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _texts_from_column(rows, text_field: str, where: str) -> list[str]:
    """The non-null strings of column `text_field` of a HF `datasets.Dataset`."""
    if text_field not in rows.column_names:
        raise DataError(f"{where} has no field '{text_field}'; available fields: "
                        f"{', '.join(rows.column_names) or '(none)'}. Set data.text_field to the "
                        "one holding the text")
    out = []
    for i, value in enumerate(rows[text_field]):
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: row {i} field '{text_field}' is a {type(value).__name__}, "
                            "not text; set data.text_field to a string field")
        out.append(value)
    return out


def _load_table_file(path: Path, builder: str, text_field: str,
                     cache_dir: Path | None) -> list[str]:
    """One .jsonl / .json / .parquet file -> the strings in its `text_field` column."""
    where = f"'{path}'"
    with _hf_offline(), tempfile.TemporaryDirectory() as scratch:
        import datasets  # already imported (and checked) by _hf_offline

        # Without a persistent cache_dir the Arrow copy lives in a scratch folder we delete.
        hf_cache = str(cache_dir) if cache_dir is not None else scratch
        try:
            ds = datasets.load_dataset(builder, data_files=[str(path)], split="train",
                                       cache_dir=hf_cache)
        except Exception as e:  # datasets wraps parser errors in several types
            root = e
            while root.__cause__ is not None:  # the parser's own message is the useful one
                root = root.__cause__
            raise DataError(f"could not read {where} as {builder}: {type(root).__name__}: "
                            f"{root}") from e
        return _texts_from_column(ds, text_field, where)


def _load_files(paths: Sequence[str], text_field: str, cache_dir: Path | None,
                limit: int) -> list[str]:
    if not paths:
        raise DataError("data.source=files needs data.paths (a list of .txt / .jsonl / .json / "
                        ".parquet files)")
    allowed = ", ".join(TEXT_EXTENSIONS + tuple(DATASET_EXTENSIONS))
    resolved = []
    for p in paths:  # check every path before reading any, so one typo fails fast
        path = Path(p).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.paths: '{p}' does not exist; list existing "
                                    f"{allowed} files")
        if not path.is_file():
            raise DataError(f"data.paths: '{p}' is not a file; list the files themselves "
                            f"({allowed}), not a directory")
        suffix = path.suffix.lower()
        if suffix not in TEXT_EXTENSIONS and suffix not in DATASET_EXTENSIONS:
            raise DataError(f"data.paths: '{p}' has the unsupported extension "
                            f"'{path.suffix or '(none)'}'; supported: {allowed}")
        resolved.append(path)
    docs: list[str] = []
    for path in resolved:
        suffix = path.suffix.lower()
        if suffix in TEXT_EXTENSIONS:
            docs.append(path.read_text(encoding="utf-8", errors="replace"))
        else:
            docs.extend(_load_table_file(path, DATASET_EXTENSIONS[suffix], text_field, cache_dir))
        if limit and sum(1 for d in docs if d.strip()) >= limit:
            break
    return docs


def stream_hub_documents(data_cfg, limit: int) -> Iterator[str]:
    """The first `limit` non-blank documents of a hub dataset, streamed (needs network; never used
    by the tests). The shard store's prepare step iterates it without keeping the documents."""
    if not data_cfg.hf_name:
        raise DataError("data.source=hf needs data.hf_name (a dataset name on the hub)")
    if limit <= 0:
        raise DataError("data.source=hf streams the dataset; set data.max_documents to how many "
                        "documents to take (e.g. data.max_documents=100000)")
    datasets = _import_datasets("data.source=hf")
    stream = datasets.load_dataset(data_cfg.hf_name, data_cfg.hf_config or None,
                                   split=data_cfg.hf_split, streaming=True)
    where = f"hub dataset '{data_cfg.hf_name}' (split {data_cfg.hf_split})"
    taken = 0
    for i, row in enumerate(stream):
        if data_cfg.text_field not in row:
            raise DataError(f"{where} has no field '{data_cfg.text_field}'; available fields: "
                            f"{', '.join(row) or '(none)'}. Set data.text_field to the one "
                            "holding the text")
        value = row[data_cfg.text_field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: row {i} field '{data_cfg.text_field}' is a "
                            f"{type(value).__name__}, not text; set data.text_field")
        if value.strip():
            yield value
            taken += 1
            if taken >= limit:
                return


def load_documents(data_cfg, cache_dir: str | Path | None = None) -> list[str]:
    """The documents of `data_cfg.source` (see the module docstring), non-empty, in a fixed order.

    data_cfg: a `zoo.config.DataConfig`.
    cache_dir: the memzoo cache root; HF `datasets` keeps its Arrow copies of local json / parquet
        files under `<cache_dir>/hf_datasets`. Default: a scratch folder deleted after reading
        (nothing written to the user's caches).
    Raises FileNotFoundError for a missing path and DataError for an unsupported extension, a
    missing text field, a source without documents, or source=mqar (it has no documents).
    """
    limit = int(data_cfg.max_documents)
    if limit < 0:
        raise DataError(f"data.max_documents must be >= 0 (0 = all), got {limit}")
    source = data_cfg.source
    hf_cache = Path(cache_dir) / "hf_datasets" if cache_dir is not None else None
    if source == "builtin":
        docs = builtin_corpus()
    elif source == "files":
        docs = _load_files(tuple(data_cfg.paths), data_cfg.text_field, hf_cache, limit)
    elif source == "hf":
        docs = list(stream_hub_documents(data_cfg, limit))
    elif source == "mqar":
        raise DataError("data.source=mqar generates token sequences and has no documents; "
                        "use zoo.data.make_data, which builds the MQAR iterator")
    else:
        raise DataError(f"data.source={source!r} is not supported; choose builtin, files, hf "
                        "or mqar")
    docs = [d for d in docs if d.strip()]
    if limit:
        docs = docs[:limit]
    if not docs:
        raise DataError(f"data.source={source} gave no documents (all empty or blank); check "
                        "data.paths / data.text_field / data.hf_name")
    return docs


def split_documents(docs: Sequence[str], fraction: float,
                    seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split by whole documents.

    The document indices are shuffled with `np.random.default_rng(seed)`; the last
    `ceil(fraction * n)` of the permutation are held out (at least 1 when fraction > 0 and
    n >= 2, at most n - 1 so training keeps a document). Both lists keep the original document
    order. fraction = 0 (or a single document) holds nothing out.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.heldout_fraction must be in [0, 1), got {fraction}")
    n = len(docs)
    if n == 0:
        raise DataError("cannot split an empty document list; the data source gave no documents")
    held = heldout_mask(n, fraction, seed)
    train = [d for d, h in zip(docs, held) if not h]
    heldout = [d for d, h in zip(docs, held) if h]
    return train, heldout


def heldout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool [n]: which of n documents `split_documents` holds out (its docstring has the rule)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.heldout_fraction must be in [0, 1), got {fraction}")
    n_held = 0
    if fraction > 0 and n >= 2:
        n_held = min(max(1, math.ceil(fraction * n)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    held = np.zeros(n, dtype=bool)
    held[perm[n - n_held:]] = True
    return held

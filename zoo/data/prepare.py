"""Tokenize a corpus once into a shard store (`zoo.data.store`); `scripts/prepare_data.py` is the CLI.

    prepare_store(cfg, out_dir)      # cfg: zoo.config.Config; its data section names the source

What it does, in order:
1. The documents of `data.source` in their fixed order, each marked train or held-out:
   builtin / files: `load_documents` + the same split as the in-memory pipeline
   (`split_documents`: a seeded permutation), so the store holds exactly the documents and
   tokens `make_data` would build; hf: streamed (`data.max_documents` of them), held out by a
   seeded hash of the document's index (the stream's length is not known in advance).
2. The tokenizer `make_data` would build (bytes, `data.tokenizer_path`, or SentencePiece trained
   on the training documents; for hf on the first `tokenizer_documents` of them), saved in the
   store.
3. Documents tokenized in batches (SentencePiece encodes a batch on `workers` threads) and
   written by a background thread into shards of about `shard_tokens` tokens per split. Each
   shard is written to a temporary name and renamed; `progress.json` then records it, with the
   index of the next document of the stream. `manifest.json` is written last.

Resume: rerunning with the same config and directory skips every recorded shard and restarts the
stream at the earliest split's next document (a shard cut short by the interruption is rewritten).
A directory that holds a store of another config is refused.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from zoo.data.cache import atomic_write_bytes, default_cache_dir
from zoo.data.errors import DataError, check_positive_int
from zoo.data.shuffle import derive_key, mix64
from zoo.data.sources import heldout_mask, load_documents
from zoo.data.store import FORMAT, MANIFEST, PROGRESS, SPLITS, read_json, shard_paths, token_dtype
from zoo.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

DEFAULT_SHARD_TOKENS = 1 << 26  # 64M tokens: 128 MB of uint16 per shard
ENCODE_BATCH = 512  # documents per tokenizer call


def source_description(data_cfg) -> dict:
    """What defines a store's content; a resumed or reused store must match it exactly."""
    d = data_cfg
    desc = {"source": d.source, "max_documents": d.max_documents, "heldout_fraction": d.heldout_fraction,
            "seed": d.seed, "tokenizer": d.tokenizer}
    if d.source == "files":
        desc.update(paths=[str(Path(p).expanduser().resolve()) for p in d.paths], text_field=d.text_field)
    elif d.source == "hf":
        desc.update(hf_name=d.hf_name, hf_config=d.hf_config, hf_split=d.hf_split, text_field=d.text_field)
    elif d.source != "builtin":
        raise DataError(f"data.source={d.source} has no documents to store; prepare_data.py takes builtin, "
                        "files or hf")
    if d.tokenizer_path:
        desc["tokenizer_sha256"] = hashlib.sha256(Path(d.tokenizer_path).expanduser().read_bytes()).hexdigest()
    return desc


def hashed_heldout(index: int, fraction: float, seed: int) -> bool:
    """The streaming split: document `index` is held out iff a seeded hash of it, read as a
    uniform number in [0, 1), is below `fraction`."""
    return int(mix64(np.uint64(derive_key(seed, index)))) / 2.0 ** 64 < fraction


def _documents(data_cfg, cache_dir: Path) -> tuple[Iterator[tuple[str, bool]], list[str] | None, str]:
    """(iterator of (text, held out) in stream order, the training texts when known up front,
    the split rule's name)."""
    if data_cfg.source in ("builtin", "files"):
        docs = load_documents(data_cfg, cache_dir=cache_dir)
        held = heldout_mask(len(docs), data_cfg.heldout_fraction, data_cfg.seed)
        train = [d for d, h in zip(docs, held) if not h]
        return iter(zip(docs, held.tolist())), train, "permutation"
    from zoo.data.sources import stream_hub_documents

    stream = stream_hub_documents(data_cfg, data_cfg.max_documents)
    rule = (lambda i: hashed_heldout(i, data_cfg.heldout_fraction, data_cfg.seed))
    return ((text, rule(i)) for i, text in enumerate(stream)), None, "hash"


def _tokenizer(cfg, out: Path, train_texts, tokenizer_documents: int, cache_dir: Path) -> Tokenizer:
    if (out / "tokenizer.json").is_file():
        return load_tokenizer(out)  # a resumed store keeps the tokenizer its shards were written with
    d = cfg.data
    if train_texts is None and d.tokenizer == "sentencepiece" and not d.tokenizer_path:
        stream = stream_first_training_documents(d, tokenizer_documents)
        train_texts = list(stream)
    tok = build_tokenizer(d, cfg.model.vocab_size, train_texts, cache_dir / "tokenizers")
    tok.save(out)
    return tok


def stream_first_training_documents(data_cfg, n: int) -> Iterator[str]:
    from zoo.data.sources import stream_hub_documents

    for i, text in enumerate(stream_hub_documents(data_cfg, data_cfg.max_documents)):
        if n <= 0:
            return
        if not hashed_heldout(i, data_cfg.heldout_fraction, data_cfg.seed):
            n -= 1
            yield text


@dataclasses.dataclass
class _SplitWriter:
    """Collects one split's tokenized documents and cuts them into shards."""

    root: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    shards: list[dict]
    pending: list[np.ndarray] = dataclasses.field(default_factory=list)
    pending_tokens: int = 0
    first_index: int = -1  # stream index of the first pending document

    @property
    def next_index(self) -> int:
        """Stream index after the last document of the last finished shard (0 if none)."""
        return self.shards[-1]["next_index"] if self.shards else 0

    def add(self, index: int, ids: np.ndarray) -> dict | None:
        """Adds document `index`; returns a shard job when the shard is full."""
        if self.first_index < 0:
            self.first_index = index
        self.pending.append(ids)
        self.pending_tokens += len(ids)
        return self.cut(index + 1) if self.pending_tokens >= self.shard_tokens else None

    def cut(self, next_index: int) -> dict | None:
        if not self.pending:
            return None
        name = f"{self.split}/shard-{len(self.shards):05d}"
        lengths = np.array([len(p) for p in self.pending], np.int64)
        docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate(self.pending).astype(self.dtype) if lengths.sum() else np.zeros(0, self.dtype)
        record = {"name": name, "documents": len(self.pending), "tokens": int(lengths.sum()),
                  "first_index": self.first_index, "next_index": next_index}
        self.shards.append(record)
        self.pending, self.pending_tokens, self.first_index = [], 0, -1
        return {"record": record, "tokens": tokens, "docs": docs}


def _write_npy(path: Path, array: np.ndarray) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def _write_shard(root: Path, job: dict) -> dict:
    tokens_path, docs_path = shard_paths(root, job["record"]["name"])
    job["record"]["tokens_bytes"] = _write_npy(tokens_path, job["tokens"])
    job["record"]["docs_bytes"] = _write_npy(docs_path, job["docs"])
    return job["record"]


class _Progress:
    """tqdm when it is installed, else a line every few seconds."""

    def __init__(self, enabled: bool, done: int, total: int | None):
        self.bar, self.enabled, self.count, self.last = None, enabled, done, 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, unit="doc", desc="prepare_data", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int, tokens: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
        elif self.enabled and time.time() - self.last > 5:
            self.last = time.time()
            print(f"prepare_data: {self.count:,} documents, {tokens:,} tokens", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare_store(cfg, out: str | Path, *, shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int = 0,
                  tokenizer_documents: int = 100_000, cache_dir: str | Path | None = None,
                  progress: bool = True, stop_after_shards: int | None = None) -> dict:
    """Writes (or finishes) the store of `cfg.data` in `out`; returns the manifest.

    workers: tokenizer threads (0 = the cores, at most 16). stop_after_shards: stop (as if
    interrupted) once that many shards are written in this call; for tests of resuming.
    """
    shard_tokens = check_positive_int("shard_tokens", shard_tokens)
    out = Path(out).expanduser()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    desc = source_description(cfg.data)
    if (out / MANIFEST).is_file():
        manifest = read_json(out / MANIFEST, "store manifest")
        check_same_source(out / MANIFEST, manifest.get("source_description"), desc)
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    state = read_json(out / PROGRESS, "store progress file") if (out / PROGRESS).is_file() else None
    if state is not None:
        check_same_source(out / PROGRESS, state.get("source_description"), desc)
        if state.get("shard_tokens") != shard_tokens:
            raise DataError(f"'{out}' was started with --shard-tokens {state.get('shard_tokens')}; resume it with "
                            "the same value, or prepare into an empty directory")
    elif any(out.iterdir()):
        raise DataError(f"'{out}' is not empty and holds no memzoo store in progress; prepare into an empty "
                        "(or new) directory so nothing there is overwritten")

    docs, train_texts, rule = _documents(cfg.data, cache)
    tok = _tokenizer(cfg, out, train_texts, tokenizer_documents, cache)
    dtype = token_dtype(tok.vocab_size)
    done = {s: list(state["splits"][s]) if state else [] for s in SPLITS}
    writers = {s: _SplitWriter(out, s, dtype, shard_tokens, done[s]) for s in SPLITS}
    start = min(w.next_index for w in writers.values())
    counts = {s: {"documents": 0, "tokens": 0} for s in SPLITS}

    def save_progress() -> None:
        finished = {s: [r for r in writers[s].shards if "tokens_bytes" in r] for s in SPLITS}
        atomic_write_bytes(out / PROGRESS, json.dumps({
            "format": FORMAT, "source_description": desc, "shard_tokens": shard_tokens, "split_rule": rule,
            "splits": finished}, indent=1).encode())

    save_progress()
    threads = workers or None
    bar = _Progress(progress, start, cfg.data.max_documents or None)
    written = 0
    stopped = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # the writer thread
        jobs: list[concurrent.futures.Future] = []

        def submit(job: dict | None) -> None:
            nonlocal written, stopped
            if job is None:
                return
            jobs.append(pool.submit(_write_shard, out, job))
            written += 1
            if stop_after_shards is not None and written >= stop_after_shards:
                stopped = True

        def finish_jobs() -> None:
            for j in jobs:
                j.result()
            jobs.clear()
            save_progress()

        index = 0
        batch: list[tuple[int, str, bool]] = []

        def encode(batch) -> None:
            texts = [t for _, t, _ in batch]
            ids = tok.encode_batch(texts, threads)
            for (i, _, held), doc in zip(batch, ids):
                split = "heldout" if held else "train"
                counts[split]["documents"] += 1
                counts[split]["tokens"] += len(doc)
                if i >= writers[split].next_index:  # not stored by an earlier run
                    submit(writers[split].add(i, np.asarray(doc, np.int64)))
            bar.update(len(batch), sum(c["tokens"] for c in counts.values()))
            if any(j.done() for j in jobs):
                finish_jobs()

        for text, held in docs:
            if index >= start:
                batch.append((index, text, held))
            index += 1
            if len(batch) == ENCODE_BATCH:
                encode(batch)
                batch = []
            if stopped:
                break
        if batch and not stopped:
            encode(batch)
        if not stopped:
            for s in SPLITS:
                submit(writers[s].cut(index))
        finish_jobs()
    bar.close()
    if stopped:
        return {}
    if not writers["train"].shards:
        raise DataError(f"data.source={cfg.data.source} gave no training documents; nothing was stored")
    manifest = {
        "format": FORMAT, "source_description": desc, "split_rule": rule, "shard_tokens": shard_tokens,
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                      "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                      "sha256": hashlib.sha256(getattr(tok, "model_proto", b"bytes")).hexdigest()},
        "token_dtype": dtype.name,
        "splits": {s: {"documents": sum(r["documents"] for r in writers[s].shards),
                       "tokens": sum(r["tokens"] for r in writers[s].shards),
                       "shards": writers[s].shards} for s in SPLITS},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def check_same_source(where: Path, saved, desc: dict) -> None:
    """The store at `where` was made from the data settings `desc` (`source_description`)."""
    if saved != desc:
        diff = sorted(k for k in set(desc) | set(saved or {}) if (saved or {}).get(k) != desc.get(k))
        raise DataError(f"'{where}' was written for other data settings (differing: {', '.join(diff)}); "
                        "prepare the store again into an empty directory, or use the config it was made with")

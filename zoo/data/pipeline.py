"""`make_data(cfg)`: config -> tokenizer + training iterator + held-out batches.

Text sources (builtin | files | hf):
    documents -> split by document (data.heldout_fraction, data.seed)
    -> tokenizer built on the *training* documents only (bytes, data.tokenizer_path, or a
       SentencePiece model of exactly model.vocab_size ids, trained once and cached)
    -> [bos] doc [eos] packed into rows of data.seq_len (zoo.data.packing)
    -> BatchIterator(batch_size=data.batch_size, seed=data.seed), reshuffled every epoch.
Shard store (source=shards): a corpus tokenized once by scripts/prepare_data.py
(`zoo.data.store`), its tokenizer read from the store, rows packed from disk on demand and shuffled
by a keyed permutation (`StoreBatchIterator`); held-out rows from the store's held-out split.
MQAR (source=mqar): batches generated on the fly by `zoo.data.synthetic.mqar_batch`
(vocabulary = model.vocab_size), held-out batches from a separate seed stream.
Needles (source=niah): rows of `zoo.data.synthetic.niah.niah_training_batch` for data.niah.task
(prompt at a random depth + answer, loss on the answer), generated the same way; the tokenizer
is bytes or SentencePiece trained on the built-in corpus (or data.niah.haystack_path).

Every process of a multi-host job calls `make_data` with the same config and the same iterator;
each reads only the rows of each global batch its devices hold (`next_rows`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.cache import default_cache_dir
from zoo.data.errors import DataError, check_positive_int
from zoo.data.iterator import Batch, BatchIterator, GeneratorBatchIterator, StoreBatchIterator
from zoo.data.packing import PACKED_KEYS, pack_documents
from zoo.data.sources import load_documents, split_documents
from zoo.data.synthetic.haystack import NOISE_PASSAGE, make_haystack
from zoo.data.synthetic.mqar import MQAR_VERSION, mqar_batch, validate_mqar
from zoo.data.synthetic.niah import NIAH_TASKS, NIAH_VERSION, niah_training_batch
from zoo.data.tokenizers import ByteTokenizer, Tokenizer, build_tokenizer, load_tokenizer

# Held-out synthetic batch i uses np.random.default_rng((seed, HELDOUT_STREAM, i)); training
# batch i uses (seed, i): the two streams never share a generator state.
HELDOUT_STREAM = 0x68656C64
# heldout_batches(max_batches=0) of a synthetic task (which never runs out) gives this many.
DEFAULT_SYNTHETIC_HELDOUT_BATCHES = 16


def _empty_rows(n: int, seq_len: int) -> Batch:
    """n rows of padding: token 0, segment 0, loss_mask 0."""
    return {k: np.zeros((n, seq_len), np.float32 if k == "loss_mask" else np.int32)
            for k in PACKED_KEYS}


@dataclasses.dataclass
class DataBundle:
    """What training and evaluation need from the data.

    tokenizer: the run's tokenizer (save it into the workdir; `load_tokenizer` reads it back).
    train: endless, checkpointable iterator of [data.batch_size, data.seq_len] batches.
    heldout: packed held-out rows [N, seq_len] of a text source (None if nothing is held out).
    heldout_rows: the held-out split of a shard store (`zoo.data.store.PackedRows`), read on demand.
    heldout_generator: `(rng, batch_size) -> batch` of a synthetic task (None for text).
    info: JSON-ready facts for logs and result files (source, document / token / row counts,
        tokenizer, task version).
    """

    tokenizer: Tokenizer
    train: BatchIterator | GeneratorBatchIterator
    heldout: dict[str, np.ndarray] | None = None
    heldout_rows: Any = None
    heldout_generator: Callable[[np.random.Generator, int], Batch] | None = None
    heldout_seed: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def heldout_batches(self, batch_size: int, max_batches: int = 0) -> list[Batch]:
        """Deterministic evaluation batches, each [batch_size, seq_len], same keys as training.

        Text: all held-out rows in order, unshuffled; the last batch is completed with padding
        rows (loss_mask 0) so every batch has the same shape. Synthetic: freshly generated
        batches from the held-out seed stream. max_batches > 0 keeps the first max_batches;
        0 = all rows (text) or DEFAULT_SYNTHETIC_HELDOUT_BATCHES (synthetic).
        Returns [] when nothing was held out (data.heldout_fraction=0).
        """
        batch_size = check_positive_int("held-out batch_size", batch_size)
        if max_batches < 0:
            raise DataError(f"max_batches must be >= 0 (0 = all), got {max_batches}")
        if self.heldout_generator is not None:
            n = max_batches or DEFAULT_SYNTHETIC_HELDOUT_BATCHES
            return [self.heldout_generator(
                np.random.default_rng((self.heldout_seed, HELDOUT_STREAM, i)), batch_size)
                for i in range(n)]
        if self.heldout_rows is not None:
            rows, seq_len = self.heldout_rows.num_rows, self.heldout_rows.seq_len
        elif self.heldout is not None:
            rows, seq_len = self.heldout["inputs"].shape
        else:
            return []
        n = -(-rows // batch_size)
        if max_batches:
            n = min(n, max_batches)
        batches = []
        for i in range(n):
            picks = np.arange(i * batch_size, min((i + 1) * batch_size, rows))
            if self.heldout_rows is not None:
                batch = self.heldout_rows.read(picks)
            else:
                batch = {k: np.array(self.heldout[k][picks]) for k in PACKED_KEYS}
            short = batch_size - batch["inputs"].shape[0]
            if short:
                pad = _empty_rows(short, seq_len)
                batch = {k: np.concatenate([batch[k], pad[k]]) for k in PACKED_KEYS}
            batches.append(batch)
        return batches


def _make_mqar(cfg) -> DataBundle:
    d = cfg.data
    m = d.mqar
    vocab = cfg.model.vocab_size
    validate_mqar(d.batch_size, d.seq_len, vocab, m.num_pairs, m.key_vocab, m.power_a)
    generate = functools.partial(mqar_batch, seq_len=d.seq_len, vocab_size=vocab,
                                 num_pairs=m.num_pairs, key_vocab=m.key_vocab, power_a=m.power_a)
    name = (f"{MQAR_VERSION}; seq_len={d.seq_len} vocab_size={vocab} num_pairs={m.num_pairs} "
            f"key_vocab={m.key_vocab} power_a={m.power_a}")
    info = {"source": "mqar", "task_version": MQAR_VERSION, "seq_len": d.seq_len,
            "vocab_size": vocab, "num_pairs": m.num_pairs, "key_vocab": m.key_vocab,
            "power_a": m.power_a, "seed": d.seed, "tokenizer": "bytes (nominal; MQAR is ids)"}
    # MQAR sequences are token ids, not text: the ByteTokenizer is only there so that every
    # run saves a loadable tokenizer (its decode skips ids outside its 259).
    return DataBundle(tokenizer=ByteTokenizer(),
                      train=GeneratorBatchIterator(generate, d.batch_size, d.seed, name=name),
                      heldout_generator=generate, heldout_seed=d.seed, info=info)


def _make_niah(cfg, root: Path, tokenizer: Tokenizer | None) -> DataBundle:
    d, n = cfg.data, cfg.data.niah
    if tokenizer is None:
        texts = None
        if d.tokenizer == "sentencepiece" and not d.tokenizer_path:
            from zoo.data.builtin import builtin_corpus

            path = Path(n.haystack_path) if n.haystack_path else None
            texts = [path.read_text(errors="replace")] if path and path.is_file() else builtin_corpus()
            texts = texts + [NOISE_PASSAGE]
        tokenizer = build_tokenizer(d, cfg.model.vocab_size, texts, root / "tokenizers")
    haystack = make_haystack(NIAH_TASKS[n.task].haystack, tokenizer, n.haystack_path or None)
    generate = functools.partial(niah_training_batch, seq_len=d.seq_len, name=n.task, tokenizer=tokenizer,
                                 haystack=haystack)
    try:
        generate(np.random.default_rng(0), 1)
    except DataError as e:
        raise DataError(f"data.seq_len={d.seq_len} is too short for data.niah.task={n.task}: {e}") from None
    name = f"{NIAH_VERSION}; task={n.task} seq_len={d.seq_len} haystack={haystack.source}"
    info = {"source": "niah", "task": n.task, "task_version": NIAH_VERSION, "seq_len": d.seq_len,
            "haystack": haystack.source, "seed": d.seed, "tokenizer": tokenizer.kind}
    return DataBundle(tokenizer=tokenizer, train=GeneratorBatchIterator(generate, d.batch_size, d.seed, name=name),
                      heldout_generator=generate, heldout_seed=d.seed, info=info)


def _make_store(cfg, tokenizer: Tokenizer | None) -> DataBundle:
    """source=shards: the tokenizer, training rows and held-out rows of a prepared store."""
    from zoo.data.store import ShardStore

    d = cfg.data
    if not d.shards_dir:
        raise DataError("data.source=shards needs data.shards_dir (a directory written by "
                        "scripts/prepare_data.py)")
    store = ShardStore(d.shards_dir)
    if d.source != "shards":  # the config names the raw source too: the store must be of it
        from zoo.data.prepare import check_same_source, source_description

        check_same_source(store.path / "manifest.json", store.manifest.get("source_description"),
                          source_description(d))
    tok = load_tokenizer(store.path)
    check_store_tokenizer(store, tok, cfg, tokenizer)
    align = max(d.align_documents, 1)
    if d.seq_len > store.manifest["shard_tokens"]:
        raise DataError(f"data.seq_len={d.seq_len} is longer than the store '{store.path}' supports: a row never "
                        f"spans two shards and its shards hold about {store.manifest['shard_tokens']:,} tokens; "
                        "lower data.seq_len, or prepare the store again with a larger --shard-tokens")
    train_rows = store.rows("train", d.seq_len, align, tok.bos_id, tok.eos_id, tok.pad_id)
    if train_rows.num_rows < d.batch_size:
        raise DataError(f"data.seq_len={d.seq_len} is too long for the store '{store.path}' at "
                        f"data.batch_size={d.batch_size}: its {store.manifest['splits']['train']['tokens']:,} training "
                        f"tokens pack into {train_rows.num_rows} rows; lower data.seq_len or data.batch_size, or "
                        "prepare more documents")
    held = store.rows("heldout", d.seq_len, align, tok.bos_id, tok.eos_id, tok.pad_id)
    train = StoreBatchIterator(train_rows, d.batch_size, seed=d.seed, shuffle=True)
    splits = store.manifest["splits"]
    info = {"source": "shards", "shards_dir": str(store.path), "store_id": store.id,
            "documents_train": splits["train"]["documents"], "documents_heldout": splits["heldout"]["documents"],
            "tokens_train": splits["train"]["tokens"], "rows_train": train.num_rows, "rows_heldout": held.num_rows,
            "seq_len": d.seq_len, "tokenizer": tok.kind, "tokenizer_vocab_size": tok.vocab_size}
    return DataBundle(tokenizer=tok, train=train, heldout_rows=held if held.num_rows else None,
                      heldout_seed=d.seed, info=info)


def check_store_tokenizer(store, tok: Tokenizer, cfg, given: Tokenizer | None) -> None:
    """The store's tokenizer must be the one the config (and a run's saved tokenizer) expects."""
    d, where = cfg.data, store.path / "manifest.json"
    saved = store.manifest["tokenizer"]
    if d.tokenizer != saved["kind"]:
        raise DataError(f"'{where}': the store was tokenized with {saved['kind']}, the config asks for "
                        f"data.tokenizer={d.tokenizer}; set data.tokenizer={saved['kind']} or prepare a new store")
    if d.tokenizer_path:
        sha = hashlib.sha256(Path(d.tokenizer_path).expanduser().read_bytes()).hexdigest()
        if sha != saved["sha256"]:
            raise DataError(f"'{where}': the store's tokenizer is not data.tokenizer_path='{d.tokenizer_path}' "
                            "(different sha256); clear data.tokenizer_path (the store carries its tokenizer) "
                            "or prepare the store with this tokenizer")
    if tok.kind == "sentencepiece" and tok.vocab_size != cfg.model.vocab_size:
        raise DataError(f"'{where}': the store's tokenizer has {tok.vocab_size} ids but model.vocab_size="
                        f"{cfg.model.vocab_size}; set model.vocab_size={tok.vocab_size}")
    if tok.vocab_size > cfg.model.vocab_size:
        raise DataError(f"'{where}': the store's tokenizer has {tok.vocab_size} ids, more than model.vocab_size="
                        f"{cfg.model.vocab_size}; raise model.vocab_size")
    if given is not None and (given.kind, given.vocab_size, getattr(given, "model_proto", b"")) != (
            tok.kind, tok.vocab_size, getattr(tok, "model_proto", b"")):
        raise DataError(f"'{where}': the store's tokenizer is not the one this run was trained with; "
                        "evaluate with the store the run was trained on")


def make_data(cfg, cache_dir: str | Path | None = None, tokenizer: Tokenizer | None = None) -> DataBundle:
    """Builds the data of a `zoo.config.Config` (module docstring).

    tokenizer: use this tokenizer (e.g. the one a training run saved in its workdir) instead of
        building one, so evaluation tokenizes exactly as training did.

    cache_dir: the memzoo cache root (default `$MEMZOO_CACHE` or `~/.cache/memzoo`); trained
        tokenizers go to `<cache_dir>/tokenizers`, HF datasets' copies of local json / parquet
        files to `<cache_dir>/hf_datasets`.
    """
    d = cfg.data
    if d.source == "mqar":
        return _make_mqar(cfg)
    if d.source == "shards" or (d.shards_dir and d.source in ("builtin", "files", "hf")):
        return _make_store(cfg, tokenizer)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if d.source == "niah":
        return _make_niah(cfg, root, tokenizer)
    docs = load_documents(d, cache_dir=root)
    train_docs, held_docs = split_documents(docs, d.heldout_fraction, d.seed)
    tok = tokenizer or build_tokenizer(d, cfg.model.vocab_size, train_docs, root / "tokenizers")

    def pack(documents: list[str]) -> dict[str, np.ndarray]:
        return pack_documents(tok.encode_batch(documents), d.seq_len, tok.bos_id, tok.eos_id,
                              tok.pad_id, align=max(d.align_documents, 1))

    packed = pack(train_docs)
    heldout = pack(held_docs) if held_docs else None
    train = BatchIterator(packed, d.batch_size, seed=d.seed, shuffle=True)
    info = {
        "source": d.source,
        "documents_train": len(train_docs),
        "documents_heldout": len(held_docs),
        "tokens_train": int((packed["segment_ids"] > 0).sum()),  # non-padding input tokens
        "rows_train": train.num_rows,
        "rows_heldout": 0 if heldout is None else int(heldout["inputs"].shape[0]),
        "seq_len": d.seq_len,
        "tokenizer": tok.kind,
        "tokenizer_vocab_size": tok.vocab_size,
        "tokenizer_file": str(getattr(tok, "path", None) or ""),
        "tokenizer_from_cache": bool(getattr(tok, "from_cache", False)),
    }
    return DataBundle(tokenizer=tok, train=train, heldout=heldout, heldout_seed=d.seed, info=info)

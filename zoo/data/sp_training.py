"""Training SentencePiece models, Llama-2 style, cached by the hash of their input.

`train_sentencepiece(texts, vocab_size, cache_dir)` turns documents into training lines, looks
for `<cache_dir>/<sha256>.model` (the hash covers the lines, vocab_size and the settings below)
and only trains, in memory from an iterator (`sentence_iterator` / `model_writer`), when that
file is absent. Measured on 2 cores: vocab 2048 on the built-in corpus (2.2M characters, 45K
lines) trains in about 0.5 s; a cache hit costs the hashing, about 0.05 s.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.cache import atomic_write_bytes, default_cache_dir
from zoo.data.errors import DataError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# Llama-2-style settings (google/sentencepiece doc/options.md). Identity normalisation and kept
# whitespace make decode(encode(text)) == text; byte_fallback turns every character outside the
# vocabulary into its UTF-8 bytes, so no text maps to <unk>; character_coverage=1.0 gives every
# character of the corpus its own piece.
SP_TRAIN_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "character_coverage": 1.0,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": True,
    "allow_whitespace_only_pieces": True,
    "pad_id": PAD_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "unk_id": UNK_ID,
    "pad_piece": "<pad>", "bos_piece": "<s>", "eos_piece": "</s>", "unk_piece": "<unk>",
    "input_sentence_size": 2_000_000,  # lines; more are subsampled (seeded) before training
    "shuffle_input_sentence": True,
    "max_sentence_length": 65536,  # bytes; longer lines are cut into pieces first
}
# Changing how the training input is prepared must change the cache key: bump this.
CACHE_FORMAT = 1
# A line of at most this many characters is at most max_sentence_length bytes in UTF-8.
_MAX_LINE_CHARS = SP_TRAIN_SETTINGS["max_sentence_length"] // 4
# 256 byte pieces + pad / bos / eos / unk: what a byte-fallback model holds before any character
# or merge.
SP_MIN_VOCAB = 256 + 4


def import_sentencepiece():
    """The `sentencepiece` module, imported on first use."""
    import sentencepiece  # late: only SentencePiece users need it

    return sentencepiece


def num_threads() -> int:
    """Threads for SentencePiece training / batch encoding: the cores, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


def training_lines(texts: Iterable[str]) -> list[str]:
    """Documents -> the non-blank lines SentencePiece trains on (a "sentence" is one line), long
    lines cut into pieces that fit max_sentence_length (SentencePiece would skip them)."""
    lines = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"tokenizer training texts must be strings; item {i} is a "
                            f"{type(text).__name__}")
        for line in text.splitlines():
            if not line.strip():
                continue
            for start in range(0, len(line), _MAX_LINE_CHARS):
                lines.append(line[start:start + _MAX_LINE_CHARS])
    return lines


def cache_key(lines: Sequence[str], vocab_size: int) -> str:
    """sha256 (hex) of the training lines, the vocabulary size and the trainer settings."""
    h = hashlib.sha256()
    header = {"format": CACHE_FORMAT, "vocab_size": vocab_size, "settings": SP_TRAIN_SETTINGS}
    h.update(json.dumps(header, sort_keys=True).encode())
    for line in lines:  # lines hold no line breaks, so "\n" separates them unambiguously
        h.update(line.encode("utf-8", errors="surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def _explain(err: Exception, vocab_size: int, num_lines: int) -> DataError:
    """SentencePiece's RuntimeError -> a DataError that says which setting to change."""
    msg = str(err).strip()
    if "smaller than required_chars" in msg:
        need = msg.rsplit(" vs ", 1)[-1].split(".")[0].strip()
        return DataError(
            f"vocab_size={vocab_size} is too small for a byte-fallback SentencePiece model of this "
            f"corpus: it needs at least {need} (256 byte pieces + 4 special ids + one piece per "
            f"distinct character), plus room for merges. Set model.vocab_size >= {need} "
            "(e.g. 1024), or use data.tokenizer=bytes.")
    if "too high" in msg:
        return DataError(
            f"vocab_size={vocab_size} is too large for this corpus ({num_lines} lines): "
            f"SentencePiece says: {msg}. Lower model.vocab_size or add more text.")
    return DataError(f"SentencePiece training failed (vocab_size={vocab_size}, {num_lines} "
                     f"lines): {msg}")


def _is_model(data: bytes) -> bool:
    try:
        import_sentencepiece().SentencePieceProcessor(model_proto=data)
        return True
    except RuntimeError:
        return False


def train_sentencepiece(texts: Iterable[str], vocab_size: int,
                        cache_dir: str | Path | None = None) -> tuple[bytes, Path, bool]:
    """Trains (or finds in the cache) a BPE model of exactly `vocab_size` pieces on `texts`.

    texts: documents (an iterable of str, read once); every non-blank line is a sentence.
    vocab_size: >= 260 + the number of distinct characters of the corpus; a smaller one raises
        a DataError naming the minimum, a larger one than the corpus supports says so too.
    cache_dir: folder of the cached models (default `<memzoo cache>/tokenizers`).
    Returns (model bytes, path of the cached .model file, whether it came from the cache).
    Deterministic: more than input_sentence_size lines are subsampled with a fixed seed, so every
    host of a multi-host job trains the same model.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or vocab_size < SP_MIN_VOCAB + 1:
        raise DataError(f"SentencePiece vocab_size must be an integer >= {SP_MIN_VOCAB + 1} "
                        f"(256 byte-fallback pieces + pad/bos/eos/unk + characters), got "
                        f"{vocab_size!r}; raise model.vocab_size (e.g. 1024) or use "
                        "data.tokenizer=bytes")
    vocab_size = int(vocab_size)
    if isinstance(texts, str):
        raise DataError("SentencePiece training expects an iterable of documents, got a single "
                        "string; wrap it in a list")
    lines = training_lines(texts)
    if not lines:
        raise DataError("no text to train the SentencePiece tokenizer on: the training "
                        "documents are empty or blank; check the data source")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tokenizers"
    path = cache_dir / f"{cache_key(lines, vocab_size)}.model"
    if path.is_file():
        data = path.read_bytes()
        if _is_model(data):
            return data, path, True
        # a damaged cache entry (e.g. a disk filled up mid-write elsewhere): train again

    limit = SP_TRAIN_SETTINGS["input_sentence_size"]
    if len(lines) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(lines), size=limit, replace=False))
        lines = [lines[i] for i in keep]
    spm = import_sentencepiece()
    spm.set_random_generator_seed(0)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
            num_threads=num_threads(), minloglevel=2, **SP_TRAIN_SETTINGS)
    except RuntimeError as e:
        raise _explain(e, vocab_size, len(lines)) from None
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data, path, False

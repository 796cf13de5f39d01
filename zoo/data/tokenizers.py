"""Tokenizers: a byte-level one and a SentencePiece (Llama-style BPE) one, with one protocol.

Both tokenizers offer
    encode(text) -> list[int]            token ids, no bos / eos added
    encode_batch(texts, threads=None) -> list[list[int]]
    decode(ids) -> str                   ids: any 1-D int sequence / array; special ids skipped
    vocab_size, pad_id (= 0), bos_id, eos_id
    save(directory)                      writes tokenizer.json (+ tokenizer.model for SentencePiece)
and `load_tokenizer(directory)` reads back what `save` wrote.

`build_tokenizer(data_cfg, vocab_size, texts, cache_dir)` is what the data pipeline calls: bytes,
an existing `.model` file, or a SentencePiece model trained on the training documents and cached
by the hash of its input (see `SentencePieceTokenizer.train`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.cache import atomic_write_bytes
from zoo.data.errors import DataError
from zoo.data.sp_training import BOS_ID, EOS_ID, PAD_ID, import_sentencepiece, num_threads, train_sentencepiece

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
# Every memzoo tokenizer has pad = 0, bos = 1, eos = 2 (SentencePiece models trained here also
# reserve unk = 3; see zoo.data.sp_training).


def _as_id_array(ids: Any) -> np.ndarray:
    """ids: list / tuple / numpy / jax array of any shape -> 1-D int64 numpy array."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros((0,), np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"decode expects integer token ids, got an array of dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64)


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 = pad, 1 = bos, 2 = eos, byte b -> b + 3; vocab_size 259.

    Needs no training and no files; used for unit tests, byte-level smoke runs and as the
    (nominal) tokenizer of synthetic token tasks such as MQAR.
    """

    kind = "bytes"
    offset = 3

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, text: str) -> list[int]:
        """text -> [len(text.encode('utf-8'))] ids in [3, 259)."""
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return (data.astype(np.int32) + self.offset).tolist()

    def encode_batch(self, texts: Iterable[str], threads: int | None = None) -> list[list[int]]:
        """Many texts (`threads` is accepted for the common protocol; bytes need no threads)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Any) -> str:
        """ids -> text. Special ids (< 3) and ids outside the vocabulary (a model whose vocab is
        larger than 259 can emit them) are skipped; invalid UTF-8 becomes U+FFFD."""
        arr = _as_id_array(ids)
        keep = arr[(arr >= self.offset) & (arr < self.vocab_size)] - self.offset
        return keep.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        """Writes `<directory>/tokenizer.json`; `load_tokenizer(directory)` reads it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "pad_id": self.pad_id,
                "bos_id": self.bos_id, "eos_id": self.eos_id}
        atomic_write_bytes(directory / TOKENIZER_JSON, json.dumps(meta, indent=2).encode())

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


class SentencePieceTokenizer:
    """A trained SentencePiece model: pad = 0, bos = 1, eos = 2 (unk = 3 when trained here).

    Build one with `SentencePieceTokenizer.train(texts, vocab_size, cache_dir)` or
    `SentencePieceTokenizer.load(path_to_model)`. `from_cache` tells whether `train` found the
    model already trained; `path` is the `.model` file it was read from (None if built in memory).
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, path: Path | None = None):
        spm = import_sentencepiece()
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.path = path
        self.from_cache = False
        where = f"'{path}'" if path else "the given model"
        if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
            raise DataError(f"SentencePiece model {where} has no bos or eos piece "
                            f"(bos_id={self._sp.bos_id()}, eos_id={self._sp.eos_id()}); memzoo "
                            "packs documents as <bos> text <eos>; train it with bos_id / eos_id "
                            "set")
        n = self._sp.get_piece_size()
        self._skip = np.array(
            [self._sp.is_control(i) or self._sp.is_unused(i) for i in range(n)], dtype=bool)
        self._skip[PAD_ID] = True

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        """Reads a `.model` file (e.g. one written by `save` or by spm_train)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model '{path}' does not exist; pass the path "
                                    "of a .model file (or leave data.tokenizer_path empty to "
                                    "train one)")
        try:
            return cls(path.read_bytes(), path=path)
        except RuntimeError as e:
            raise DataError(f"'{path}' is not a valid SentencePiece model: {e}") from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              cache_dir: str | Path | None = None) -> SentencePieceTokenizer:
        """Trains a Llama-style BPE model on `texts` (documents), or reuses the cached one.

        See `zoo.data.sp_training.train_sentencepiece`: the model is cached as
        `<cache_dir>/<sha256 of lines + vocab_size + settings>.model` (default cache_dir:
        `<$MEMZOO_CACHE or ~/.cache/memzoo>/tokenizers`); `from_cache` on the result says whether
        it was. vocab_size is exact and must be >= 260 + the corpus's distinct characters; too
        small raises a DataError naming the minimum.
        """
        proto, path, from_cache = train_sentencepiece(texts, vocab_size, cache_dir)
        tok = cls(proto, path=path)
        tok.from_cache = from_cache
        return tok

    # ---- protocol ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def model_proto(self) -> bytes:
        """The serialized model (the bytes of a .model file)."""
        return self._proto

    def encode(self, text: str) -> list[int]:
        """text -> ids (no bos / eos)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Iterable[str], threads: int | None = None) -> list[list[int]]:
        """Many texts at once, on `threads` threads (default: the cores, at most 16): much faster
        than a loop over `encode`."""
        texts = list(texts)
        if not texts:
            return []
        return self._sp.encode(texts, out_type=int, num_threads=threads or num_threads())

    def decode(self, ids: Any) -> str:
        """ids -> text; pad / bos / eos (control pieces) and ids outside the vocabulary skipped."""
        arr = _as_id_array(ids)
        arr = arr[(arr >= 0) & (arr < self.vocab_size)]
        arr = arr[~self._skip[arr]]
        return self._sp.decode(arr.tolist())

    def save(self, directory: str | Path) -> None:
        """Writes `<directory>/tokenizer.model` and `<directory>/tokenizer.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / TOKENIZER_MODEL, self._proto)
        meta = {"kind": self.kind, "model_file": TOKENIZER_MODEL, "vocab_size": self.vocab_size,
                "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "unk_id": self.unk_id, "sha256": hashlib.sha256(self._proto).hexdigest()}
        atomic_write_bytes(directory / TOKENIZER_JSON, json.dumps(meta, indent=2).encode())

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, path={str(self.path)!r})"


Tokenizer = ByteTokenizer | SentencePieceTokenizer


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Reads a tokenizer saved with `save(directory)` (e.g. a training run's workdir).

    A path to a `.model` file is also accepted and loaded as a SentencePiece model.
    """
    directory = Path(directory)
    if directory.is_file() and directory.suffix == ".model":
        return SentencePieceTokenizer.load(directory)
    meta_path = directory / TOKENIZER_JSON
    if not meta_path.is_file():
        what = "does not exist" if not directory.exists() else f"holds no {TOKENIZER_JSON}"
        raise FileNotFoundError(f"no tokenizer in '{directory}': the directory {what}. Pass the "
                                "directory a tokenizer was saved to (a training run's workdir), "
                                "or a .model file")
    try:
        meta = json.loads(meta_path.read_text())
        kind = meta["kind"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"'{meta_path}' is not a memzoo tokenizer description ({e}); it should "
                        "be a JSON object with a 'kind' key, as written by "
                        "tokenizer.save()") from None
    if kind == ByteTokenizer.kind:
        return ByteTokenizer()
    if kind == SentencePieceTokenizer.kind:
        model = directory / str(meta.get("model_file", TOKENIZER_MODEL))
        if not model.is_file():
            raise FileNotFoundError(f"'{meta_path}' describes a SentencePiece tokenizer but its "
                                    f"model file '{model}' is missing; save the tokenizer again")
        return SentencePieceTokenizer.load(model)
    raise DataError(f"'{meta_path}' names an unknown tokenizer kind {kind!r}; known kinds: "
                    f"{ByteTokenizer.kind}, {SentencePieceTokenizer.kind}")


def build_tokenizer(data_cfg, vocab_size: int, texts: Iterable[str] | None,
                    cache_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer `data_cfg` asks for, with exactly `vocab_size` ids (bytes: at most).

    data_cfg: a `zoo.config.DataConfig`; reads `tokenizer` ("bytes" | "sentencepiece") and
        `tokenizer_path` (an existing .model file instead of training).
    texts: the training documents SentencePiece is trained on (not needed otherwise).
    cache_dir: where trained models are cached (default `<memzoo cache>/tokenizers`).
    """
    kind = data_cfg.tokenizer
    if kind == "bytes":
        if data_cfg.tokenizer_path:
            raise DataError("data.tokenizer_path is only used with data.tokenizer=sentencepiece; "
                            "clear it or set data.tokenizer=sentencepiece")
        tok = ByteTokenizer()
        if vocab_size < tok.vocab_size:
            raise DataError(f"data.tokenizer=bytes needs model.vocab_size >= {tok.vocab_size} "
                            f"(256 bytes + pad/bos/eos), got {vocab_size}")
        return tok
    if kind != "sentencepiece":
        raise DataError(f"data.tokenizer={kind!r} is not supported; choose bytes or sentencepiece")
    if data_cfg.tokenizer_path:
        path = Path(data_cfg.tokenizer_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.tokenizer_path='{data_cfg.tokenizer_path}' does not "
                                    "exist; point it at a SentencePiece .model file or leave it "
                                    "empty to train a tokenizer on the training documents")
        tok = SentencePieceTokenizer.load(path)
        if tok.vocab_size != vocab_size:
            raise DataError(f"the tokenizer '{path}' has {tok.vocab_size} pieces but "
                            f"model.vocab_size={vocab_size}; set model.vocab_size={tok.vocab_size}")
        return tok
    if texts is None:
        raise DataError("training a SentencePiece tokenizer needs the training texts; pass them, "
                        "or set data.tokenizer_path to an existing .model file")
    return SentencePieceTokenizer.train(texts, vocab_size, cache_dir)

"""The tokenized shard store: a corpus tokenized once, read by memory-mapping at any scale.

Layout of a store directory (written by `zoo.data.prepare` / `scripts/prepare_data.py`):

    manifest.json                 written last: the store is complete (format, tokenizer, source,
                                  split rule, counts, every shard with its sizes)
    progress.json                 while writing: the shards finished so far (resume point)
    tokenizer.json [+ .model]     the tokenizer every shard was encoded with
    train/shard-00000.tokens.npy  uint16 (or uint32) [n_tokens]: the documents' ids back to back,
                                  no bos / eos / padding
    train/shard-00000.docs.npy    int64 [n_docs + 1]: document d is tokens[docs[d]:docs[d + 1]]
    heldout/...                   the same for the held-out documents

Rows are packed when read, with exactly the semantics of `zoo.data.packing` (bos / eos added,
`align` padding, segment ids, loss mask), per shard: a shard's documents form one stream, so a
row never spans two shards and a store with one shard gives the rows `pack_documents` gives. The
row count of every shard is computed once at open from its `docs` array; a row's documents are
found by binary search. Nothing else is loaded: the tokens stay on disk, memory-mapped.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from zoo.data.errors import DataError
from zoo.data.packing import rows_from_windows

FORMAT = "memzoo-shards-v1"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
SPLITS = ("train", "heldout")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_paths(root: Path, name: str) -> tuple[Path, Path]:
    """(tokens file, docs file) of shard `name` (e.g. "train/shard-00003")."""
    return root / f"{name}.tokens.npy", root / f"{name}.docs.npy"


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"'{path}' is not valid JSON ({e}); the {what} is corrupt: prepare the store "
                        "again (scripts/prepare_data.py) into an empty directory") from None
    if not isinstance(value, dict):
        raise DataError(f"'{path}' is not a JSON object; the {what} is corrupt")
    return value


class ShardStore:
    """A complete store, opened for reading (`ShardStore(path)`); checks it before any compile."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        manifest = self.path / MANIFEST
        if not self.path.is_dir():
            raise FileNotFoundError(f"data.shards_dir='{self.path}' does not exist; create the store with "
                                    "`python scripts/prepare_data.py --config CFG --out DIR` and point "
                                    "data.shards_dir at DIR")
        if not manifest.is_file():
            partial = (self.path / PROGRESS).is_file()
            why = ("holds a partial store: scripts/prepare_data.py stopped before it finished; rerun the "
                   "same command to resume it" if partial else
                   f"has no {MANIFEST}: it is not a memzoo shard store (make one with scripts/prepare_data.py)")
            raise DataError(f"data.shards_dir='{self.path}' {why}")
        self.manifest = read_json(manifest, "store manifest")
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"'{manifest}' has format {self.manifest.get('format')!r}, this memzoo reads "
                            f"{FORMAT!r}; prepare the store again with this version's scripts/prepare_data.py")
        self.dtype = np.dtype(self.manifest["token_dtype"])
        self.id = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        for split in SPLITS:
            for shard in self.shards(split):
                self._check_shard(shard)

    def shards(self, split: str) -> list[dict]:
        return list(self.manifest["splits"][split]["shards"])

    def _check_shard(self, shard: dict) -> None:
        tokens, docs = shard_paths(self.path, shard["name"])
        for path, want in ((tokens, shard["tokens_bytes"]), (docs, shard["docs_bytes"])):
            if not path.is_file():
                raise FileNotFoundError(f"shard file '{path}' listed in {self.path / MANIFEST} is missing; "
                                        "copy the whole store directory, or prepare it again")
            if path.stat().st_size != want:
                raise DataError(f"shard file '{path}' has {path.stat().st_size} bytes, the manifest says "
                                f"{want}: it is truncated or corrupt. Copy the store again from where it came "
                                "from, or prepare it again into an empty directory (scripts/prepare_data.py)")

    def rows(self, split: str, seq_len: int, align: int, bos_id: int, eos_id: int, pad_id: int = 0) -> PackedRows:
        """The split packed into rows of `seq_len` (documents aligned to `align`)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; a store has {', '.join(SPLITS)}")
        return PackedRows(self, split, seq_len, align, bos_id, eos_id, pad_id)


class PackedRows:
    """Random access to the packed rows of one split: `read(rows) -> dict of [n, seq_len]`.

    Row numbers run over the shards in manifest order. Memory: one int64 per shard plus a few
    shards' per-document offsets (cached), never the tokens.
    """

    def __init__(self, store: ShardStore, split: str, seq_len: int, align: int, bos_id: int, eos_id: int,
                 pad_id: int):
        self.store, self.split, self.seq_len, self.align = store, split, int(seq_len), max(int(align), 1)
        self.bos, self.eos, self.pad = bos_id, eos_id, pad_id
        self._shards = store.shards(split)
        counts = [self._rows_of(i) for i in range(len(self._shards))]
        self._row_starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._files: collections.OrderedDict[int, _TokenFile] = collections.OrderedDict()
        self._layout = functools.lru_cache(maxsize=8)(self._padded_starts)

    @property
    def num_rows(self) -> int:
        return int(self._row_starts[-1])

    def _docs(self, i: int) -> np.ndarray:
        return np.load(shard_paths(self.store.path, self._shards[i]["name"])[1], mmap_mode="r")

    def _tokens(self, i: int) -> _TokenFile:
        """Shard i's token file, kept open (the 64 most recently used ones)."""
        if i in self._files:
            self._files.move_to_end(i)
            return self._files[i]
        self._files[i] = _TokenFile(shard_paths(self.store.path, self._shards[i]["name"])[0], self.store.dtype)
        if len(self._files) > 64:
            self._files.popitem(last=False)[1].close()
        return self._files[i]

    def _padded_starts(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shard i's (start of each document's [bos] tokens [eos] block in the padded stream
        [D + 1], the block lengths [D], the documents' token offsets [D + 1])."""
        offsets = np.array(self._docs(i), np.int64)
        lengths = np.diff(offsets) + 2
        padded = lengths + (-lengths % self.align)
        return np.concatenate([[0], np.cumsum(padded)]), lengths, offsets

    def _rows_of(self, i: int) -> int:
        starts, _, _ = self._padded_starts(i)
        total = int(starts[-1])
        return 0 if total < 2 else -(-(total - 1) // self.seq_len)

    def _window(self, shard: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The stream window of `row` (local to `shard`): (tokens [T + 1], document ids [T + 1])."""
        t = self.seq_len
        starts, lengths, offsets = self._layout(shard)
        tokens = self._tokens(shard)
        lo, hi = row * t, row * t + t + 1
        out = np.full(t + 1, self.pad, np.int64)
        doc = np.full(t + 1, -1, np.int64)
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, hi, side="left"))
        for d in range(max(first, 0), min(last, len(lengths))):
            block = int(starts[d])
            a, b = max(lo, block), min(hi, block + int(lengths[d]))  # the part of [bos] doc [eos] in view
            if a >= b:
                continue
            fa, fb, n_body = a - block, b - block, int(lengths[d]) - 2  # view of [bos] body [eos]
            start = int(offsets[d])
            parts = [[self.bos]] if fa == 0 else []
            parts.append(tokens.read(start + max(fa - 1, 0), start + min(fb - 1, n_body)))
            if fb == n_body + 2:
                parts.append([self.eos])
            piece = np.concatenate(parts)
            out[a - lo:b - lo] = piece
            doc[a - lo:b - lo] = d
        return out, doc

    def read(self, rows) -> dict[str, np.ndarray]:
        """Packed rows `rows` (ints in [0, num_rows)): inputs / targets / segment_ids [n, T] int32,
        loss_mask [n, T] float32."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise DataError(f"row numbers must lie in [0, {self.num_rows}) for the {self.split} split")
        shards = np.searchsorted(self._row_starts, rows, side="right") - 1
        windows = [self._window(int(s), int(r - self._row_starts[s])) for s, r in zip(shards, rows)]
        t = self.seq_len + 1
        tokens = np.stack([w[0] for w in windows]) if windows else np.zeros((0, t), np.int64)
        docs = np.stack([w[1] for w in windows]) if windows else np.zeros((0, t), np.int64)
        return rows_from_windows(tokens, docs)


class _TokenFile:
    """Reads token ranges of a 1-D .npy file with `os.pread`: only the bytes asked for come into
    (anonymous) memory. A memory map would be simpler, but its touched pages stay mapped and count
    in the process's resident set, which then grows with the part of the store a run has seen."""

    def __init__(self, path: Path, dtype: np.dtype):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            shape, _, stored = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            self.offset = f.tell()
        if np.dtype(stored) != dtype or len(shape) != 1:
            raise DataError(f"shard file '{path}' holds {stored} {shape}, not a 1-D {dtype} token array; "
                            "the store is corrupt: prepare it again")
        self.path, self.dtype, self.size = path, np.dtype(dtype), int(shape[0])
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, start: int, stop: int) -> np.ndarray:
        """tokens[start:stop] as int64."""
        if stop <= start:
            return np.zeros(0, np.int64)
        n = (stop - start) * self.dtype.itemsize
        data = os.pread(self.fd, n, self.offset + start * self.dtype.itemsize)
        if len(data) != n:
            raise DataError(f"shard file '{self.path}' ended early: it is truncated; prepare the store again")
        return np.frombuffer(data, self.dtype).astype(np.int64)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()

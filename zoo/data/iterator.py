"""Checkpointable, deterministic batch iterators.

`BatchIterator` draws rows of a packed array in memory (`zoo.data.packing`);
`StoreBatchIterator` draws rows of a shard store read from disk (`zoo.data.store`);
`GeneratorBatchIterator` draws batches from a generator function (synthetic tasks such as MQAR).
All three:
    next(it)             -> {"inputs", "targets", "segment_ids": int32, "loss_mask": float32}
                            each [batch_size, seq_len], fresh numpy arrays
    it.next_rows(pos)    -> the same batch, only the rows at positions `pos` (a process's share)
    it.get_state()       -> a JSON-serialisable dict (store it with the checkpoint)
    it.set_state(s)      -> continue exactly where the saved iterator was
Every process of a multi-host job builds the same iterator; each reads only the rows of the global
batch that its own devices hold (`next_rows`), and all move through the same sequence of batches.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from zoo.data.errors import DataError, check_positive_int
from zoo.data.packing import PACKED_KEYS, num_rows
from zoo.data.shuffle import derive_key, permute

Batch = dict[str, np.ndarray]


def _fingerprint(packed: dict[str, np.ndarray]) -> int:
    """CRC32 of the packed inputs: tells a resumed run that its data changed since the save."""
    return zlib.crc32(np.ascontiguousarray(packed["inputs"]).view(np.uint8).reshape(-1))


def _check_state(state: Any, expected: dict[str, Any], required: tuple[str, ...]) -> dict:
    if not isinstance(state, dict):
        raise DataError(f"iterator state must be a dict (from get_state()), got "
                        f"{type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise DataError(f"iterator state is missing {', '.join(missing)}; it is corrupt or was "
                        "not written by get_state()")
    for key, want in expected.items():
        if state[key] != want:
            raise DataError(
                f"iterator state does not match this data: saved {key}={state[key]!r}, now "
                f"{want!r}. The data settings (source, tokenizer, seq_len, batch_size, seed) must "
                "be the same as when the checkpoint was written to resume its data stream")
    for key in required:
        if key not in expected and (isinstance(state[key], bool) or not isinstance(state[key], int)
                                    or state[key] < 0):
            raise DataError(f"iterator state: {key} must be a non-negative integer, got "
                            f"{state[key]!r}")
    return state


class _RowIterator:
    """Endless batches of rows of a row source, reshuffled every epoch (shared machinery).

    Epoch e visits the N rows in the order `_row_ids(e, positions)`. Batches are consecutive
    slices of the sequence epoch 0 order, epoch 1 order, ...; a batch that reaches the end of an
    epoch is completed from the start of the next one, so every row is seen exactly once per
    epoch and no row is dropped. The state is (epoch, position within the epoch's order), plus
    the settings it depends on.

    `next_rows(positions)` builds only the rows at `positions` of the next global batch (the rows
    a process of a multi-host job feeds to its own devices) and moves on by the whole batch;
    `next(it)` builds all of them.
    """

    kind = ""

    def __init__(self, num_rows: int, seq_len: int, batch_size: int, seed: int, shuffle: bool, what: str):
        self._rows, self._seq_len = int(num_rows), int(seq_len)
        batch_size = check_positive_int("batch_size", batch_size)
        if self._rows < batch_size:
            raise DataError(
                f"{what} packs into only {self._rows} rows of seq_len={seq_len}, fewer than "
                f"data.batch_size={batch_size}; use a smaller data.batch_size or data.seq_len, or more data")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._epoch = 0
        self._position = 0

    @property
    def num_rows(self) -> int:
        return self._rows

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def epoch(self) -> int:
        return self._epoch

    def _row_ids(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _read(self, rows: np.ndarray) -> Batch:
        raise NotImplementedError

    def _fingerprint(self):
        raise NotImplementedError

    def _advance(self) -> np.ndarray:
        """Row ids of the next global batch [batch_size]; moves the iterator past it."""
        picks, need = [], self.batch_size
        while need:
            take = min(need, self._rows - self._position)
            positions = np.arange(self._position, self._position + take)
            picks.append(self._row_ids(self._epoch, positions))
            self._position += take
            need -= take
            if self._position == self._rows:
                self._epoch += 1
                self._position = 0
        return np.concatenate(picks)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return self._read(self._advance())

    def next_rows(self, positions) -> Batch:
        """Only the rows at `positions` (ints in [0, batch_size)) of the next global batch, in
        that order; the iterator moves past the whole batch."""
        return self._read(self._advance()[np.asarray(positions, np.int64)])

    def _settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "shuffle": self.shuffle, "batch_size": self.batch_size,
                "num_rows": self._rows, "seq_len": self.seq_len, "fingerprint": self._fingerprint()}

    def get_state(self) -> dict[str, Any]:
        return {**self._settings(), "epoch": self._epoch, "position": self._position}

    def set_state(self, state: dict[str, Any]) -> None:
        expected = self._settings()
        state = _check_state(state, expected, tuple(expected) + ("epoch", "position"))
        if state["position"] >= self._rows:
            raise DataError(f"iterator state: position {state['position']} is past the "
                            f"{self._rows} rows of an epoch; the state is corrupt")
        self._epoch, self._position = state["epoch"], state["position"]


class BatchIterator(_RowIterator):
    """Batches of the rows of a packed array in memory (`packed`: dict of [N, T] arrays with the
    keys of `pack_documents`). Epoch e visits the rows in the order
    `np.random.default_rng((seed, e)).permutation(N)` (identity order with shuffle=False)."""

    kind = "packed"

    def __init__(self, packed: dict[str, np.ndarray], batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        rows = num_rows(packed)
        self._data = {k: np.asarray(packed[k]) for k in PACKED_KEYS}
        super().__init__(rows, self._data["inputs"].shape[1], batch_size, seed, shuffle, "the training data")
        self._crc = _fingerprint(self._data)
        self._order_epoch, self._order = -1, None

    @property
    def packed(self) -> dict[str, np.ndarray]:
        """The packed [N, T] arrays batches are drawn from (in storage order; do not modify)."""
        return self._data

    def _row_ids(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions
        if epoch != self._order_epoch:
            self._order_epoch, self._order = epoch, np.random.default_rng((self.seed, epoch)).permutation(self._rows)
        return self._order[positions]

    def _read(self, rows: np.ndarray) -> Batch:
        return {k: v[rows] for k, v in self._data.items()}

    def _fingerprint(self) -> int:
        return self._crc


class StoreBatchIterator(_RowIterator):
    """Batches of the packed rows of a shard store split (`zoo.data.store.PackedRows`), read from
    disk on demand. Epoch e visits the rows in the keyed permutation
    `zoo.data.shuffle.permute(positions, N, derive_key(seed, e))`: computed per index, so memory
    and state are O(1) in the corpus size. The fingerprint is the store's manifest hash plus the
    document alignment."""

    kind = "store"

    def __init__(self, rows, batch_size: int, seed: int = 0, shuffle: bool = True):
        self._source = rows
        super().__init__(rows.num_rows, rows.seq_len, batch_size, seed, shuffle,
                         f"the store '{rows.store.path}' ({rows.split} split)")

    def _row_ids(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions
        return permute(positions, self._rows, derive_key(self.seed, epoch))

    def _read(self, rows: np.ndarray) -> Batch:
        return self._source.read(rows)

    def _fingerprint(self) -> str:
        return f"{self._source.store.id}/align{self._source.align}"


class GeneratorBatchIterator:
    """Endless batches from `generate(rng, batch_size) -> batch` (synthetic tasks).

    Batch i is `generate(np.random.default_rng((seed, i)), batch_size)`, so the state is just i
    (the number of batches drawn) and a restored iterator continues exactly. `name` (e.g.
    "mqar-v1 ...") is stored in the state and checked on restore.
    """

    kind = "generator"

    def __init__(self, generate: Callable[[np.random.Generator, int], Batch], batch_size: int,
                 seed: int = 0, name: str = "synthetic"):
        if not callable(generate):
            raise DataError(f"generate must be a function (rng, batch_size) -> batch, got "
                            f"{type(generate).__name__}")
        batch_size = check_positive_int("batch_size", batch_size)
        self.generate = generate
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.name = str(name)
        self._step = 0

    @property
    def step(self) -> int:
        """Batches drawn so far (= the index of the next batch)."""
        return self._step

    def batch(self, index: int) -> Batch:
        """Batch number `index` of this stream, without moving the iterator."""
        return self.generate(np.random.default_rng((self.seed, int(index))), self.batch_size)

    def __iter__(self) -> GeneratorBatchIterator:
        return self

    def __next__(self) -> Batch:
        out = self.batch(self._step)
        self._step += 1
        return out

    def next_rows(self, positions) -> Batch:
        """Rows `positions` of the next batch (a synthetic batch is cheap: it is built whole)."""
        return {k: v[np.asarray(positions, np.int64)] for k, v in next(self).items()}

    def get_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self._step, "seed": self.seed,
                "batch_size": self.batch_size, "name": self.name}

    def set_state(self, state: dict[str, Any]) -> None:
        expected = {"kind": self.kind, "seed": self.seed, "batch_size": self.batch_size,
                    "name": self.name}
        state = _check_state(state, expected, tuple(expected) + ("step",))
        self._step = state["step"]

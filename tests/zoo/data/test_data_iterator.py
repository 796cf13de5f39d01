"""Checkpointable iterators: exact resume, epochs, state validation (zoo.data.iterator)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zoo.data import BatchIterator, GeneratorBatchIterator
from zoo.data.errors import DataError


def _packed(rows: int = 10, seq_len: int = 3) -> dict[str, np.ndarray]:
    """Row r is filled with r, so a batch tells which rows it holds."""
    ids = np.repeat(np.arange(rows, dtype=np.int32)[:, None], seq_len, axis=1)
    return {"inputs": ids, "targets": ids + 1, "segment_ids": np.ones_like(ids),
            "loss_mask": np.ones(ids.shape, np.float32)}


def _draw(it, n):
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))


def test_batches_shapes_and_epochs():
    it = BatchIterator(_packed(), batch_size=4, seed=0)
    batches = _draw(it, 5)  # 20 rows = 2 epochs of 10
    for b in batches:
        assert b["inputs"].shape == (4, 3) and b["inputs"].dtype == np.int32
        assert b["loss_mask"].dtype == np.float32
    rows = np.concatenate([b["inputs"][:, 0] for b in batches])
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10].tolist() == np.random.default_rng((0, 0)).permutation(10).tolist()
    assert rows[10:].tolist() == np.random.default_rng((0, 1)).permutation(10).tolist()
    assert it.epoch == 2


def test_no_shuffle_is_in_order():
    it = BatchIterator(_packed(), batch_size=4, seed=0, shuffle=False)
    rows = np.concatenate([b["inputs"][:, 0] for b in _draw(it, 3)])
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 7])  # 2 -> 3 crosses the first epoch boundary
def test_resume_matches_uninterrupted(k):
    m = 6
    reference = _draw(BatchIterator(_packed(), 4, seed=7), k + m)
    first = BatchIterator(_packed(), 4, seed=7)
    _draw(first, k)
    state = _roundtrip(first.get_state())
    resumed = BatchIterator(_packed(), 4, seed=7)
    resumed.set_state(state)
    assert _same(_draw(resumed, m), reference[k:])


def test_generator_iterator_resume_and_streams():
    def generate(rng, batch_size):
        x = rng.integers(0, 100, size=(batch_size, 5)).astype(np.int32)
        return {"inputs": x, "targets": x, "segment_ids": np.ones_like(x),
                "loss_mask": np.ones(x.shape, np.float32)}

    reference = _draw(GeneratorBatchIterator(generate, 3, seed=1, name="toy"), 8)
    assert _same([reference[4]], [generate(np.random.default_rng((1, 4)), 3)])
    it = GeneratorBatchIterator(generate, 3, seed=1, name="toy")
    _draw(it, 5)
    state = _roundtrip(it.get_state())
    assert state["step"] == 5
    resumed = GeneratorBatchIterator(generate, 3, seed=1, name="toy")
    resumed.set_state(state)
    assert _same(_draw(resumed, 3), reference[5:])
    with pytest.raises(DataError, match="name"):
        GeneratorBatchIterator(generate, 3, seed=1, name="other").set_state(state)
    with pytest.raises(DataError, match="step"):
        resumed.set_state({**state, "step": -1})


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(DataError, match=r"only 10 rows .*data.batch_size=16.*smaller"):
        BatchIterator(_packed(10), batch_size=16, seed=0)


@pytest.mark.parametrize("change, match", [
    ({"seed": 8}, "seed"),
    ({"batch_size": 2}, "batch_size"),
    ({"num_rows": 11}, "num_rows"),
    ({"position": 10}, "position"),
    ({"epoch": "1"}, "epoch"),
    ({"kind": "generator"}, "kind"),
])
def test_mismatching_state_is_rejected(change, match):
    it = BatchIterator(_packed(), 4, seed=7)
    state = {**it.get_state(), **change}
    with pytest.raises(DataError, match=match):
        BatchIterator(_packed(), 4, seed=7).set_state(state)


def test_corrupt_state_and_changed_data_are_rejected():
    it = BatchIterator(_packed(), 4, seed=7)
    state = it.get_state()
    with pytest.raises(DataError, match="must be a dict"):
        it.set_state("epoch=0")
    with pytest.raises(DataError, match="missing position"):
        it.set_state({k: v for k, v in state.items() if k != "position"})
    other = _packed()
    other["inputs"] = other["inputs"][::-1].copy()  # same shape, different tokens
    with pytest.raises(DataError, match="fingerprint"):
        BatchIterator(other, 4, seed=7).set_state(state)


def test_packed_dict_is_checked():
    bad = _packed()
    del bad["loss_mask"]
    with pytest.raises(DataError, match="missing loss_mask"):
        BatchIterator(bad, 2, seed=0)

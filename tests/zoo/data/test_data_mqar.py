"""MQAR generator (Zoology semantics): recall targets, masks, token ranges, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data import MQAR_VERSION, mqar_batch
from zoo.data.errors import DataError
from zoo.data.synthetic.mqar import key_value_ranges

CASES = [  # (seq_len, vocab_size, num_pairs, key_vocab)
    (64, 128, 4, 0),
    (128, 512, 8, 0),
    (65, 100, 16, 40),  # odd length, explicit key range
    (32, 20, 8, 0),  # the tightest vocabulary: 8 keys + 8 values above the 4 reserved ids
]


@pytest.mark.parametrize("seq_len, vocab, pairs, key_vocab", CASES)
def test_queries_recall_their_values(seq_len, vocab, pairs, key_vocab):
    b = 32
    batch = mqar_batch(np.random.default_rng(0), b, seq_len, vocab, pairs, key_vocab)
    x, y, seg, mask = (batch[k] for k in ("inputs", "targets", "segment_ids", "loss_mask"))
    assert x.shape == y.shape == seg.shape == mask.shape == (b, seq_len)
    assert x.dtype == y.dtype == seg.dtype == np.int32 and mask.dtype == np.float32
    assert (seg == 1).all()
    keys_r, values_r = key_value_ranges(vocab, key_vocab)
    assert keys_r.stop == values_r.start and keys_r.start == 4 and values_r.stop == vocab
    assert x.min() >= 4 and x.max() < vocab and y.min() >= 4 and y.max() < vocab
    assert (mask.sum(axis=1) == pairs).all()

    for row in range(b):
        keys, values = x[row, 0:2 * pairs:2], x[row, 1:2 * pairs:2]
        assert all(k in keys_r for k in keys) and all(v in values_r for v in values)
        assert len(set(keys.tolist())) == pairs and len(set(values.tolist())) == pairs
        pair = dict(zip(keys.tolist(), values.tolist()))
        query_pos = np.flatnonzero(mask[row])
        assert (query_pos >= 2 * pairs).all() and ((query_pos - 2 * pairs) % 2 == 0).all()
        assert sorted(x[row, query_pos].tolist()) == sorted(keys.tolist())  # each key once
        for t in query_pos:
            assert y[row, t] == pair[int(x[row, t])]
        # Elsewhere the target is the next input (masked out of the loss).
        other = np.setdiff1d(np.arange(seq_len - 1), query_pos)
        assert (y[row, other] == x[row, other + 1]).all()


def test_seeds_reproduce_and_differ():
    args = (16, 128, 256, 8)
    a = mqar_batch(np.random.default_rng(5), *args)
    b = mqar_batch(np.random.default_rng(5), *args)
    c = mqar_batch(np.random.default_rng(6), *args)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["inputs"], c["inputs"])
    assert MQAR_VERSION.startswith("mqar-v")


def test_power_law_puts_queries_early():
    seq_len, pairs = 512, 8
    space = (seq_len - 2 * pairs) // 2
    gaps = {}
    for a in (0.01, 1.0):  # a = 1 is uniform
        batch = mqar_batch(np.random.default_rng(0), 256, seq_len, 1024, pairs, power_a=a)
        pos = np.nonzero(batch["loss_mask"])[1]
        gaps[a] = ((pos - 2 * pairs) // 2).mean()
    assert abs(gaps[1.0] - (space - 1) / 2) < 10
    assert gaps[0.01] < 0.6 * gaps[1.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"seq_len": 31}, r"seq_len >= 4 \* num_pairs"),
    ({"vocab_size": 19}, r"Raise model.vocab_size to at least 20"),
    ({"key_vocab": 200}, "key_vocab"),
    ({"num_pairs": 0}, "num_pairs"),
    ({"power_a": 0.0}, "power_a"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments(kwargs, match):
    args = {"batch_size": 2, "seq_len": 32, "vocab_size": 64, "num_pairs": 8, **kwargs}
    with pytest.raises(DataError, match=match):
        mqar_batch(np.random.default_rng(0), **args)

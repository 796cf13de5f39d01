"""Document packing: boundaries, targets and masks (zoo.data.packing)."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data import pack_documents
from zoo.data.errors import DataError

BOS, EOS = 1, 2


def _random_docs(seed: int, n: int = 12, max_len: int = 30) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len, size=n)  # includes empty documents and long ones
    return [rng.integers(3, 50, size=int(k)).tolist() for k in lengths]


def _reconstruct(packed: dict) -> list[list[int]]:
    """Documents back from the rows, using only segment ids: a segment that does not start with
    bos is the continuation of the previous row's last document."""
    docs: list[list[int]] = []
    for inputs, targets, seg in zip(packed["inputs"], packed["targets"], packed["segment_ids"]):
        for s in range(1, seg.max() + 1):
            tokens = inputs[seg == s].tolist()
            if tokens[0] == BOS:
                docs.append(tokens)
            else:
                docs[-1].extend(tokens)
    # When the stream fills the rows exactly, its last token (the final eos) is only a target.
    if docs[-1][-1] != EOS:
        docs[-1].append(int(packed["targets"][-1, -1]))
    return [d[1:-1] for d in docs]  # strip bos / eos


@pytest.mark.parametrize("seq_len", [1, 5, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_documents_are_recovered_from_segments(seq_len, seed):
    docs = _random_docs(seed)
    packed = pack_documents(docs, seq_len, BOS, EOS)
    assert _reconstruct(packed) == docs


@pytest.mark.parametrize("seq_len", [1, 4, 7, 32])
def test_shapes_targets_and_masks(seq_len):
    docs = _random_docs(3)
    packed = pack_documents(docs, seq_len, BOS, EOS)
    stream = np.concatenate([[BOS, *d, EOS] for d in docs])
    n = -(-(len(stream) - 1) // seq_len)
    for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("segment_ids", np.int32),
                       ("loss_mask", np.float32)]:
        assert packed[key].shape == (n, seq_len) and packed[key].dtype == dtype
    inputs, targets = packed["inputs"], packed["targets"]
    seg, mask = packed["segment_ids"], packed["loss_mask"]

    # Inputs concatenated are the stream (then padding); targets are the stream shifted by one.
    flat_in, flat_tgt = inputs.reshape(-1), targets.reshape(-1)
    assert flat_in[:len(stream)].tolist() == stream[:len(flat_in)].tolist()
    assert flat_tgt[:len(stream) - 1].tolist() == stream[1:].tolist()
    assert (flat_in[len(stream):] == 0).all() and (flat_tgt[len(stream) - 1:] == 0).all()
    assert (seg.reshape(-1)[len(stream):] == 0).all() and (seg.reshape(-1)[:len(stream)] > 0).all()

    # Loss only where input and target are in the same document: never after an eos
    # (eos -> next bos, or eos -> padding), never on padding. Doc tokens are >= 3, so this is exact.
    assert np.array_equal(mask == 1, (seg > 0) & (inputs != EOS))
    # Within a segment, the target of position t is the input at t + 1.
    same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
    assert np.array_equal(targets[:, :-1][same], inputs[:, 1:][same])
    # Segment ids count documents 1, 2, ... and restart in every row.
    assert (seg[:, 0] == 1).all()
    steps = np.diff(seg, axis=1)
    assert np.isin(steps[seg[:, 1:] > 0], [0, 1]).all()
    # A new segment starts exactly at a bos (or at the start of a row).
    starts = np.zeros_like(seg, dtype=bool)
    starts[:, 1:] = (steps == 1)
    assert (inputs[starts] == BOS).all()


def test_exact_fit_has_no_padding():
    docs = [[5, 6, 7], [8]]  # stream: 1 5 6 7 2 1 8 2 -> 8 tokens = 7 pairs
    packed = pack_documents(docs, 7, BOS, EOS)
    assert packed["inputs"].tolist() == [[1, 5, 6, 7, 2, 1, 8]]
    assert packed["targets"].tolist() == [[5, 6, 7, 2, 1, 8, 2]]
    assert packed["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2]]
    assert packed["loss_mask"].tolist() == [[1, 1, 1, 1, 0, 1, 1]]


def test_document_continues_as_new_segment_in_next_row():
    packed = pack_documents([[5, 6, 7, 8, 9], [10]], 4, BOS, EOS)
    # stream 1 5 6 7 8 9 2 1 10 2 (10 tokens, 9 pairs) -> 3 rows, last one padded; the final
    # eos is an input whose target is padding.
    assert packed["inputs"].tolist() == [[1, 5, 6, 7], [8, 9, 2, 1], [10, 2, 0, 0]]
    assert packed["targets"].tolist() == [[5, 6, 7, 8], [9, 2, 1, 10], [2, 0, 0, 0]]
    assert packed["segment_ids"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 0, 0]]
    assert packed["loss_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 0]]


def test_bad_input_errors():
    with pytest.raises(DataError, match="no documents"):
        pack_documents([], 8, BOS, EOS)
    with pytest.raises(DataError, match="seq_len must be a positive integer"):
        pack_documents([[3]], 0, BOS, EOS)


def test_align_starts_every_document_on_the_grid():
    docs = [list(range(10, 10 + n)) for n in (5, 1, 9, 3, 14, 2)]
    packed = pack_documents(docs, seq_len=16, bos_id=1, eos_id=2, align=4)
    seg, inputs = packed["segment_ids"], packed["inputs"]
    starts = [(r, t) for r in range(seg.shape[0]) for t in range(seg.shape[1])
              if seg[r, t] > 0 and (t == 0 or seg[r, t] != seg[r, t - 1])]
    assert all(t % 4 == 0 for _, t in starts)
    assert sum(1 for r, t in starts if inputs[r, t] == 1) == len(docs)  # every bos opens a segment
    # the real tokens of every document are still there, in order
    tokens = [int(x) for x, s in zip(inputs.reshape(-1), seg.reshape(-1), strict=True) if s > 0 and x >= 10]
    assert tokens == [x for d in docs for x in d]
    assert packed["loss_mask"][seg == 0].sum() == 0
    with pytest.raises(Exception, match="multiple"):
        pack_documents(docs, seq_len=10, bos_id=1, eos_id=2, align=4)

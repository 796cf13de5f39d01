"""Document packing: tokenized documents -> fixed-length rows with segment ids and a loss mask.

Semantics (what every consumer of a packed row may rely on):

* Each document becomes `[bos] + tokens + [eos]`; the documents are concatenated, in order,
  into one token stream S of length L.
* Row r covers the stream window S[r*T : r*T + T + 1] (T = seq_len): `inputs[r] = S[rT : rT+T]`,
  `targets[r] = S[rT+1 : rT+T+1]`. Consecutive rows overlap by one token (a row's last target
  is the next row's first input), so every next-token pair of the stream is in exactly one row
  and concatenating all rows' inputs gives back the stream. N = ceil((L - 1) / T) rows.
* A document may run from one row into the next; in the next row it is a new segment.
* `segment_ids[r, t]` numbers the documents of the *input* tokens within row r: 1, 2, 3...,
  restarting at 1 in every row; 0 marks padding. Memory layers reset their state where the
  segment id changes.
* `loss_mask[r, t] = 1` iff target t belongs to the same document as input t: 0 on the
  eos -> next bos transition and on padding (the transition bos -> first token and last token ->
  eos are trained).
* The stream is padded with pad id 0 up to N*T + 1 tokens; padded inputs have segment 0, padded
  targets are 0 and masked.
* `align > 1` (chunked memory models, whose chunk grid must restart at every document): each
  document's `[bos] + tokens + [eos]` is followed by padding (id 0, segment 0, masked) up to a
  multiple of `align`, so with seq_len a multiple of `align` every document starts at a row
  position that is a multiple of `align`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.data.errors import DataError, check_positive_int

PACKED_KEYS = ("inputs", "targets", "segment_ids", "loss_mask")


def pack_documents(token_docs: Sequence[Sequence[int]], seq_len: int, bos_id: int,
                   eos_id: int, pad_id: int = 0, align: int = 1) -> dict[str, np.ndarray]:
    """Packs tokenized documents into rows of `seq_len` next-token pairs (module docstring).

    token_docs: D documents, each a sequence (list / 1-D array) of token ids without bos / eos.
    Returns
      inputs       int32   [N, seq_len]
      targets      int32   [N, seq_len]   the input stream shifted left by one
      segment_ids  int32   [N, seq_len]   1, 2, ... per document within a row; 0 = padding
      loss_mask    float32 [N, seq_len]   1 where input and target are in the same document
    """
    seq_len = check_positive_int("seq_len", seq_len)
    align = check_positive_int("align", align)
    if seq_len % align:
        raise DataError(f"seq_len={seq_len} must be a multiple of the document alignment {align} "
                        "(data.align_documents): change data.seq_len or data.align_documents")
    if len(token_docs) == 0:
        raise DataError("no documents to pack; the data source or its tokenization gave nothing")
    pieces = []
    for doc in token_docs:
        arr = np.asarray(doc, dtype=np.int64).reshape(-1)
        pieces.append(np.concatenate([[bos_id], arr, [eos_id]]))
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    gaps = -lengths % align  # padding after each document so the next one starts aligned
    stream = np.concatenate([np.concatenate([p, np.full(g, pad_id, np.int64)]) for p, g in zip(pieces, gaps, strict=True)])
    doc_of = np.repeat(np.stack([np.arange(len(pieces)), np.full(len(pieces), -1)], 1).reshape(-1),
                       np.stack([lengths, gaps], 1).reshape(-1))  # document of each token, -1 = padding
    if stream.min() < 0 or stream.max() > np.iinfo(np.int32).max:
        raise DataError("token ids must be in [0, 2**31); the tokenizer produced ids outside it")

    n_rows = -(-(len(stream) - 1) // seq_len)
    total = n_rows * seq_len + 1
    pad = total - len(stream)
    stream = np.concatenate([stream, np.full(pad, pad_id, np.int64)])
    doc_of = np.concatenate([doc_of, np.full(pad, -1, np.int64)])  # -1 = padding

    windows = np.lib.stride_tricks.sliding_window_view(stream, seq_len + 1)[::seq_len]
    doc_windows = np.lib.stride_tricks.sliding_window_view(doc_of, seq_len + 1)[::seq_len]
    return rows_from_windows(windows, doc_windows)


def rows_from_windows(tokens: np.ndarray, docs: np.ndarray) -> dict[str, np.ndarray]:
    """Packed rows from stream windows (module docstring): the one place that derives inputs,
    targets, segment ids and the loss mask, shared by `pack_documents` and the shard store.

    tokens: int [N, T + 1] stream windows S[rT : rT + T + 1].
    docs:   int [N, T + 1] the document of each window token (any increasing numbering of the
            stream's documents; -1 = padding).
    """
    in_doc, tgt_doc = docs[:, :-1], docs[:, 1:]
    # Every document holds >= 2 tokens and documents are consecutive in the stream, so within a
    # row the document index minus the row's first document index counts segments from 0.
    first = np.where(in_doc >= 0, in_doc, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
    segment_ids = np.where(in_doc >= 0, in_doc - first + 1, 0)
    loss_mask = (in_doc >= 0) & (in_doc == tgt_doc)
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "segment_ids": segment_ids.astype(np.int32),
        "loss_mask": loss_mask.astype(np.float32),
    }


def num_rows(packed: dict[str, np.ndarray]) -> int:
    """Rows of a packed dict, after checking it has the four keys with one shared [N, T] shape."""
    missing = [k for k in PACKED_KEYS if k not in packed]
    if missing:
        raise DataError(f"packed data is missing {', '.join(missing)}; expected the keys "
                        f"{', '.join(PACKED_KEYS)} as returned by pack_documents")
    shapes = {k: np.shape(packed[k]) for k in PACKED_KEYS}
    first = shapes["inputs"]
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise DataError(f"packed arrays must all be [rows, seq_len]; got shapes {shapes}")
    return first[0]

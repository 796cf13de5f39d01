"""Multi-query associative recall (MQAR), with the semantics of Zoology's generator
(HazyResearch/zoology, `zoology/data/multiquery_ar.py`; Arora et al. 2023), re-implemented in
vectorised NumPy.

One sequence of length T (seq_len) with P key-value pairs (num_pairs):

    positions 0 .. 2P-1      k_1 v_1 k_2 v_2 ... k_P v_P          (the "context")
    positions 2P .. T-1      random filler; key k_j re-appears once, as a query, at position
                             2P + 2 * g_j, where the gaps g_1..g_P are distinct and drawn from
                             {0, .., S-1}, S = (T - 2P) // 2, with P(g) ~ a * (g+1)^(a-1),
                             a = power_a (small a = queries mostly soon after the context)

Next-token targets are the inputs shifted left by one, except at a query position, whose target
is the value paired with the queried key; `loss_mask` is 1 exactly at the P query positions
(accuracy is measured there). Keys are drawn without replacement from the key range, values
without replacement from the value range. Token ranges (ids 0..3 reserved as pad/bos/eos/unk,
so MQAR shares the vocabulary conventions of text models):

    keys    [4, 4 + key_vocab)          key_vocab = 0 -> half of the vocab - 4 (Zoology's split)
    values  [4 + key_vocab, vocab_size)
    filler  uniform over [4, vocab_size)   (Zoology's random non-query tokens)

Differences from Zoology, on purpose: targets outside query positions are the real next tokens
but masked (Zoology stores -100 there; the masked loss is the same), the reserved ids start the
key range at 4 instead of 1, and odd seq_len is allowed (the last position is filler).
"""

from __future__ import annotations

import numpy as np

from zoo.data.errors import DataError

MQAR_VERSION = "mqar-v1 (zoology multiquery_ar semantics; keys/values above 4 reserved ids)"
NUM_RESERVED_IDS = 4


def key_value_ranges(vocab_size: int, key_vocab: int = 0) -> tuple[range, range]:
    """(key ids, value ids) for a vocabulary: disjoint ranges above the reserved ids."""
    usable = vocab_size - NUM_RESERVED_IDS
    keys = key_vocab if key_vocab > 0 else usable // 2
    return (range(NUM_RESERVED_IDS, NUM_RESERVED_IDS + keys),
            range(NUM_RESERVED_IDS + keys, vocab_size))


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"MQAR {name} must be an integer >= {minimum}, got {value!r}")


def validate_mqar(batch_size: int, seq_len: int, vocab_size: int, num_pairs: int,
                  key_vocab: int = 0, power_a: float = 0.01) -> None:
    """Raises DataError naming the offending argument (config key) and the fix."""
    _check_int("batch_size", batch_size, 1)
    _check_int("num_pairs (data.mqar.num_pairs)", num_pairs, 1)
    _check_int("seq_len (data.seq_len)", seq_len, 1)
    _check_int("vocab_size (model.vocab_size)", vocab_size, 1)
    _check_int("key_vocab (data.mqar.key_vocab)", key_vocab, 0)
    if seq_len < 4 * num_pairs:
        raise DataError(f"MQAR needs seq_len >= 4 * num_pairs: data.seq_len={seq_len} is too "
                        f"short for data.mqar.num_pairs={num_pairs}; raise data.seq_len to "
                        f"{4 * num_pairs} or lower num_pairs")
    if not (isinstance(power_a, (int, float)) and 0 < power_a <= 1):
        raise DataError(f"MQAR power_a (data.mqar.power_a) must be in (0, 1], got {power_a!r}")
    if key_vocab > vocab_size - NUM_RESERVED_IDS - num_pairs:
        raise DataError(f"data.mqar.key_vocab={key_vocab} leaves fewer than num_pairs={num_pairs} "
                        f"value ids in model.vocab_size={vocab_size} ({NUM_RESERVED_IDS} ids are "
                        f"reserved); use key_vocab <= {vocab_size - NUM_RESERVED_IDS - num_pairs} "
                        "or 0 (half of the ids)")
    keys, values = key_value_ranges(vocab_size, key_vocab)
    if len(keys) < num_pairs or len(values) < num_pairs:
        raise DataError(
            f"MQAR with num_pairs={num_pairs} needs at least {num_pairs} key ids and {num_pairs} "
            f"value ids, but model.vocab_size={vocab_size} with data.mqar.key_vocab={key_vocab} "
            f"gives {len(keys)} keys and {len(values)} values ({NUM_RESERVED_IDS} ids are "
            f"reserved). Raise model.vocab_size to at least {NUM_RESERVED_IDS + 2 * num_pairs} "
            "or adjust data.mqar.key_vocab")


def _sample_without_replacement(rng: np.random.Generator, batch: int, n: int, k: int,
                                log_p: np.ndarray | None = None) -> np.ndarray:
    """[batch, k] distinct indices in [0, n) per row, with probabilities p if given.

    Gumbel top-k: the k largest log p + Gumbel noise are distributed like k successive draws
    without replacement, which is what Zoology's np.random.choice(replace=False, p=p) does.
    """
    scores = rng.gumbel(size=(batch, n))
    if log_p is not None:
        scores = scores + log_p
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    # argpartition leaves the top k unordered; order them by score to match sequential draws.
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def mqar_batch(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int,
               num_pairs: int, key_vocab: int = 0, power_a: float = 0.01) -> dict[str, np.ndarray]:
    """A batch of MQAR sequences (module docstring).

    Returns
      inputs       int32   [batch_size, seq_len]
      targets      int32   [batch_size, seq_len]  next token; the paired value at query positions
      segment_ids  int32   [batch_size, seq_len]  all 1 (one document per row)
      loss_mask    float32 [batch_size, seq_len]  1 at the num_pairs query positions, else 0
    """
    validate_mqar(batch_size, seq_len, vocab_size, num_pairs, key_vocab, power_a)
    keys_range, values_range = key_value_ranges(vocab_size, key_vocab)
    b, p = batch_size, num_pairs
    rows = np.arange(b)[:, None]

    keys = keys_range.start + _sample_without_replacement(rng, b, len(keys_range), p)
    values = values_range.start + _sample_without_replacement(rng, b, len(values_range), p)

    space = (seq_len - 2 * p) // 2
    # log of the unnormalised power law a * (g+1)^(a-1); Gumbel top-k ignores the constant.
    log_p = (power_a - 1.0) * np.log(np.arange(1, space + 1, dtype=np.float64))
    gaps = _sample_without_replacement(rng, b, space, p, log_p)

    # One extra column so targets are the stream shifted by one.
    stream = rng.integers(NUM_RESERVED_IDS, vocab_size, size=(b, seq_len + 1))
    stream[:, 0:2 * p:2] = keys
    stream[:, 1:2 * p:2] = values
    query_pos = 2 * p + 2 * gaps  # [b, p]
    stream[rows, query_pos] = keys

    inputs = stream[:, :seq_len]
    targets = stream[:, 1:].copy()
    targets[rows, query_pos] = values
    loss_mask = np.zeros((b, seq_len), np.float32)
    loss_mask[rows, query_pos] = 1.0
    return {
        "inputs": inputs.astype(np.int32),
        "targets": targets.astype(np.int32),
        "segment_ids": np.ones((b, seq_len), np.int32),
        "loss_mask": loss_mask,
    }

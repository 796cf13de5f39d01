"""Needle-in-a-haystack tasks with RULER's semantics (Hsieh et al. 2024, `scripts/data/synthetic/niah.py`).

A needle is "One of the special magic {kind} for {key} is: {value}." with `key` an
adjective-noun pair and `value` a 7-digit number or a UUID. The prompt is

    prefix       "Some special magic {kind} are hidden within the following text. ..."
    context      haystack sentences, needles inserted at sentence boundaries
    question     "What are all the special magic {kind} for {keys} mentioned in the provided
                 text? The special magic {kind} for {keys} mentioned in the provided text are"

and the reply is scored with `string_match_all` against the queried values. Tasks (RULER names):

    s_niah_1  niah_single_1    noise haystack, one needle, number value   (Titans' S-NIAH-PK)
    s_niah_2  niah_single_2    essay haystack, one needle, number value   (S-NIAH-N)
    s_niah_3  niah_single_3    essay haystack, one needle, UUID value     (S-NIAH-W)
    mk_niah   niah_multikey_1  essay, 4 needles with distinct keys, 1 queried (3 distractors)
    mv_niah   niah_multivalue  essay, 4 needles sharing the queried key, all 4 values expected
    mq_niah   niah_multiquery  essay, 4 needles, 4 keys queried, all 4 values expected

Depth: the first queried needle starts at the sentence boundary closest to `depth` (0 = start,
1 = end of the context); the other needles go to uniformly random boundaries (RULER draws all
multi-needle positions at random). Prompts have exactly `length` tokens (haystack.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data.errors import DataError
from zoo.data.synthetic.haystack import (
    Haystack,
    PromptSample,
    depth_boundary,
    encode_piece,
    insert_at_boundaries,
    too_short,
)

NIAH_VERSION = "niah-v1 (RULER niah templates and task mix; memzoo haystacks and key words)"

ADJECTIVES = (
    "abundant", "agile", "amber", "ancient", "bitter", "brave", "brisk", "calm", "clever", "crimson",
    "curious", "distant", "eager", "elegant", "fierce", "fragile", "gentle", "gloomy", "golden",
    "hollow", "humble", "icy", "jolly", "lively", "lonely", "mellow", "misty", "narrow", "noisy",
    "polite", "proud", "quiet", "rapid", "rustic", "shiny", "silent", "sleepy", "steady", "sturdy",
    "tender", "tidy", "vivid", "wandering", "weary", "witty", "wooden", "young", "zealous",
)
NOUNS = (
    "anchor", "badger", "basket", "beacon", "canyon", "castle", "cellar", "compass", "copper",
    "cottage", "desert", "dragon", "engine", "falcon", "feather", "forest", "garden", "glacier",
    "harbor", "helmet", "island", "jacket", "kettle", "ladder", "lantern", "meadow", "mirror",
    "monkey", "needle", "orchard", "parcel", "pebble", "pepper", "pillow", "planet", "quarry",
    "rabbit", "ribbon", "saddle", "salary", "shadow", "spider", "stage", "teapot", "thunder",
    "tunnel", "violin", "wagon", "walnut", "window",
)


@dataclasses.dataclass(frozen=True)
class NIAHTask:
    """haystack: 'noise' | 'essay'; value_kind: 'numbers' | 'uuids'; keys: needles' distinct
    keys (queried + distractors); values: needles per key; queries: keys asked about."""

    haystack: str
    value_kind: str
    keys: int = 1
    values: int = 1
    queries: int = 1


NIAH_TASKS = {
    "s_niah_1": NIAHTask("noise", "numbers"),
    "s_niah_2": NIAHTask("essay", "numbers"),
    "s_niah_3": NIAHTask("essay", "uuids"),
    "mk_niah": NIAHTask("essay", "numbers", keys=4),
    "mv_niah": NIAHTask("essay", "numbers", values=4),
    "mq_niah": NIAHTask("essay", "numbers", keys=4, queries=4),
}


def _task(name: str) -> NIAHTask:
    if name not in NIAH_TASKS:
        raise DataError(f"unknown needle task '{name}'; choose one of {', '.join(NIAH_TASKS)}")
    return NIAH_TASKS[name]


def _keys(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct adjective-noun keys, e.g. 'wandering-salary'."""
    flat = rng.choice(len(ADJECTIVES) * len(NOUNS), size=n, replace=False)
    return [f"{ADJECTIVES[i // len(NOUNS)]}-{NOUNS[i % len(NOUNS)]}" for i in flat]


def _values(rng: np.random.Generator, kind: str, n: int) -> list[str]:
    """n distinct 7-digit numbers or UUID4-formatted strings."""
    if kind == "numbers":
        return [str(v) for v in rng.choice(9_000_000, size=n, replace=False) + 1_000_000]
    out = []
    for _ in range(n):
        h = "".join(f"{b:02x}" for b in rng.integers(0, 256, size=16))
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(rng.integers(4))]}{h[17:20]}-{h[20:32]}")
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def niah_texts(name: str, keys: list[str], kind_noun: str) -> tuple[str, str]:
    """(prefix, question) templates of a task for the queried `keys`."""
    prefix = (f"Some special magic {kind_noun} are hidden within the following text. Make sure to "
              f"memorize it. I will quiz you about the {kind_noun} afterwards.")
    k = _join(keys)
    question = (f"What are all the special magic {kind_noun} for {k} mentioned in the provided text? "
                f"The special magic {kind_noun} for {k} mentioned in the provided text are")
    return prefix, question


def niah_sample(name: str, rng: np.random.Generator, tokenizer, haystack: Haystack, length: int,
                depth: float) -> PromptSample:
    """One sample of task `name` (module docstring): a prompt of exactly `length` tokens with the
    first queried needle at `depth` in [0, 1] of the context."""
    task = _task(name)
    if haystack.kind != task.haystack:
        raise DataError(f"{name} uses a '{task.haystack}' haystack, got a '{haystack.kind}' one")
    if not 0.0 <= depth <= 1.0:
        raise DataError(f"needle depth must be in [0, 1], got {depth}")
    kind_noun = task.value_kind
    keys = _keys(rng, task.keys)
    values = _values(rng, task.value_kind, task.keys * task.values)
    needles = [(keys[i // task.values], v) for i, v in enumerate(values)]  # key-major order
    queried = keys[: task.queries]
    prefix, question = niah_texts(name, queried, kind_noun)
    needle_ids = [encode_piece(tokenizer, f"One of the special magic {kind_noun} for {k} is: {v}.")
                  for k, v in needles]
    head, tail = encode_piece(tokenizer, prefix), encode_piece(tokenizer, question)
    needed = len(head) + len(tail) + sum(len(n) for n in needle_ids)
    if needed > length:
        raise too_short(name, length, needed)
    pieces = haystack.fill(rng, length - needed)
    first = depth_boundary(pieces, depth)
    spots = [first] + [int(b) for b in rng.integers(0, len(pieces) + 1, size=len(needle_ids) - 1)]
    context = insert_at_boundaries(pieces, list(zip(spots, needle_ids)))
    prompt = np.concatenate([head, *context, tail]).astype(np.int32)
    answers = tuple(v for k, v in needles if k in queried)
    return PromptSample(task=name, prompt=prompt, answers=answers, question=question, length=length,
                        depth=float(depth))


def niah_training_batch(rng: np.random.Generator, batch_size: int, seq_len: int, name: str, tokenizer,
                        haystack: Haystack) -> dict[str, np.ndarray]:
    """Language-model rows for training on needle task `name`: each row is a prompt (random depth)
    followed by the answer " {values}." and eos, padded to `seq_len`; the loss is on the answer
    and eos only.

    Returns inputs, targets, segment_ids (1 on the sample, 0 on padding) int32 [batch, seq_len] and
    loss_mask float32 [batch, seq_len].
    """
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    # Room for the longest answer: the widest values of the task's kind, plus eos.
    widest = "9" * 7 if NIAH_TASKS[name].value_kind == "numbers" else "f" * 8 + "-ffff-4fff-bfff-" + "f" * 12
    n_values = NIAH_TASKS[name].values * NIAH_TASKS[name].queries
    reserve = 2 * len(encode_piece(tokenizer, _join([widest] * n_values) + ".")) + 1
    out = {k: np.zeros((batch_size, seq_len), np.int32) for k in ("inputs", "targets", "segment_ids")}
    out["loss_mask"] = np.zeros((batch_size, seq_len), np.float32)
    for row in range(batch_size):
        sample = niah_sample(name, rng, tokenizer, haystack, seq_len - reserve, float(rng.uniform()))
        answer = np.append(encode_piece(tokenizer, _join(list(sample.answers)) + "."), eos).astype(np.int32)
        stream = np.concatenate([sample.prompt, answer])
        stream = np.pad(stream, (0, seq_len + 1 - len(stream)), constant_values=pad)
        p, a = len(sample.prompt), len(answer)
        out["inputs"][row], out["targets"][row] = stream[:seq_len], stream[1:]
        out["segment_ids"][row, : p + a - 1] = 1
        out["loss_mask"][row, p - 1: p + a - 1] = 1.0
    return out

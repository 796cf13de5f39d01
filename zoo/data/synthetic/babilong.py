"""BABILong-style samples (Kuratov et al. 2024): a bAbI story hidden in a haystack, at a target
length in tokens of OUR tokenizer.

Results are generator-based, not leaderboard-comparable: the stories come from memzoo's own
bAbI simulator (zoo.data.synthetic.babi), not from the bAbI files BABILong uses, the haystack is
ours (RULER-style noise or essay text rather than PG-19), lengths count our tokenizer's tokens,
and the prompt template is a plain one without BABILong's per-task instructions and examples.

Prompt (pieces of int32 ids, each encoded with `encode_piece`, i.e. with a leading space):

    PREFIX  "<context>"  context  "</context>"  "Question: {question} Answer:"

    context = haystack.fill(rng, budget) with the facts inserted, in order, at random sentence
              boundaries; budget = length - (tokens of the template, facts and question), so the
              prompt has exactly `length` tokens. length 0 ("0k"): the facts alone, no haystack.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.data.errors import DataError
from zoo.data.synthetic.babi import BABI_VERSION, babi_story
from zoo.data.synthetic.haystack import Haystack, PromptSample, encode_piece, insert_at_boundaries, too_short

BABILONG_LENGTHS = {"0k": 0, "1k": 1024, "2k": 2048, "4k": 4096, "8k": 8192, "16k": 16384,
                    "32k": 32768, "64k": 65536, "128k": 131072}
BABILONG_TEMPLATE = "plain-context-question-v1"
BABILONG_VERSION = f"babilong-v1 ({BABI_VERSION}; template {BABILONG_TEMPLATE})"

PREFIX = ("I give you a context with facts hidden in some unrelated text. "
          "Answer the question about the facts.")
CONTEXT_OPEN = "<context>"
CONTEXT_CLOSE = "</context>"
QUESTION = "Question: {question} Answer:"


def hide_facts(rng: np.random.Generator, facts: list[np.ndarray], filler: list[np.ndarray]) -> list[np.ndarray]:
    """Facts (int32 id pieces) inserted in order at random boundaries between filler pieces:
    len(facts) boundaries drawn uniformly from 0..len(filler) and sorted."""
    bounds = np.sort(rng.integers(0, len(filler) + 1, size=len(facts)))
    return insert_at_boundaries(filler, [(int(b), f) for b, f in zip(bounds, facts)])


def _template(tokenizer, question: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The id pieces before and after the context."""
    head = [encode_piece(tokenizer, PREFIX), encode_piece(tokenizer, CONTEXT_OPEN)]
    tail = [encode_piece(tokenizer, CONTEXT_CLOSE), encode_piece(tokenizer, QUESTION.format(question=question))]
    return head, tail


def babilong_sample(task: str, rng: np.random.Generator, tokenizer, haystack: Haystack | None,
                    length: int, num_facts: int | None = None) -> PromptSample:
    """One BABILong sample of bAbI `task` ('qa1'..'qa5') as an int32 [length] prompt
    (module docstring); `haystack` may be None only for length 0. `num_facts`: the story size
    (None: bAbI-like default sizes, see babi_story). The story is drawn from `rng` first.

    Raises DataError (from `too_short`) when the template, facts and question alone take more
    than `length` tokens.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise DataError(f"BABILong length must be an integer >= 0 tokens, got {length!r}")
    if length > 0 and haystack is None:
        raise DataError(f"BABILong length {length} needs a haystack (only length 0 has none)")
    story = babi_story(task, rng, num_facts)
    name = f"babilong_{task}"
    head, tail = _template(tokenizer, story.question)
    facts = [encode_piece(tokenizer, f) for f in story.facts]
    needed = sum(len(p) for p in head + tail + facts)
    if length == 0:
        context = facts
    else:
        if needed > length:
            raise too_short(name, length, needed)
        context = hide_facts(rng, facts, haystack.fill(rng, length - needed))
    prompt = np.concatenate(head + context + tail).astype(np.int32)
    return PromptSample(task=name, prompt=prompt, answers=(story.answer,), question=story.question,
                        length=int(length), depth=None)


# Official data: `datasets.load_dataset("RMT-team/babilong", "1k")["qa1"].to_json("DIR/1k/qa1.jsonl")`
# (or .json / .parquet) puts BABILong's own samples where `eval.py --babilong-data DIR` finds them.
OFFICIAL_EXTENSIONS = (".jsonl", ".json", ".parquet")


def find_official_file(directory: str | Path, task: str, length_label: str) -> Path | None:
    """`<directory>/<length_label>/<task>.{jsonl,json,parquet}` (e.g. DIR/1k/qa1.jsonl) or None."""
    for ext in OFFICIAL_EXTENSIONS:
        path = Path(directory) / length_label / f"{task}{ext}"
        if path.is_file():
            return path
    return None


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading {path} needs pyarrow (pip install pyarrow), or export the "
                            "split as .jsonl") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON / JSON lines: {e}") from None


def official_samples(path: str | Path, task: str, tokenizer, limit: int) -> list[PromptSample]:
    """Up to `limit` BABILong samples from an official split file (columns input, question,
    target), in our prompt template; prompt lengths are whatever the text tokenizes to."""
    path = Path(path)
    rows = _read_rows(path)[:limit]
    out = []
    for i, row in enumerate(rows):
        missing = {"input", "question", "target"} - set(row)
        if missing:
            raise DataError(f"{path} row {i} lacks {sorted(missing)}: BABILong files have the columns "
                            "input, question and target")
        head, tail = _template(tokenizer, row["question"])
        prompt = np.concatenate(head + [encode_piece(tokenizer, row["input"])] + tail).astype(np.int32)
        out.append(PromptSample(task=f"babilong_{task}", prompt=prompt, answers=(str(row["target"]),),
                                question=row["question"], length=len(prompt), depth=None))
    if not out:
        raise DataError(f"{path} holds no samples")
    return out

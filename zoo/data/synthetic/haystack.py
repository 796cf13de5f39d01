"""Haystacks for long-context tasks: filler text as tokenized sentences, cut to exact budgets.

A prompt of a long-context task is `prefix + context + question`, where the context is haystack
sentences with needles (or bAbI facts) inserted at sentence boundaries. Every generator builds
prompts of exactly the requested number of tokens: haystack sentences are appended whole until
the budget is reached and the last one is cut at the token level, so all prompts of one length
have the same shape (and batch without padding).

Haystack kinds (RULER's names, `noise` and `essay`):
    noise   RULER's fixed five-sentence passage, repeated ("The grass is green. ...").
    essay   natural text: the built-in corpus (Python's own documentation, see zoo.data.builtin)
            or a user-given text file, split into sentences with a regex.

Sentences are tokenized one at a time with a leading space (so SentencePiece and byte
tokenizers both see word boundaries), which makes token counts additive.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from zoo.data.errors import DataError

NOISE_PASSAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HAYSTACK_KINDS = ("noise", "essay")
# Essay sentences kept: 4..80 words, no long digit runs (they could collide with number needles).
_MIN_WORDS, _MAX_WORDS = 4, 80
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_DIGIT_RUN = re.compile(r"\d{5,}")


def split_sentences(text: str) -> list[str]:
    """Text -> sentences: whitespace collapsed, split after . ! ? before a capital or quote."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s]


def _essay_sentences(documents: list[str]) -> list[str]:
    keep = []
    for doc in documents:
        for s in split_sentences(doc):
            words = len(s.split())
            if _MIN_WORDS <= words <= _MAX_WORDS and not _DIGIT_RUN.search(s) and re.search(r"[a-z]", s):
                keep.append(s)
    return keep


def encode_piece(tokenizer, text: str) -> np.ndarray:
    """One sentence (or template piece) as int32 ids, with a leading space for word boundary."""
    return np.asarray(tokenizer.encode(" " + text.strip()), np.int32)


@dataclasses.dataclass
class Haystack:
    """Tokenized filler sentences. `kind`: 'noise' | 'essay'; `source`: where the text came from."""

    kind: str
    source: str
    sentences: list[str]
    ids: list[np.ndarray]  # each [n_tokens] int32, one per sentence

    def fill(self, rng: np.random.Generator, budget: int) -> list[np.ndarray]:
        """Consecutive sentences from a random start (wrapping around) totalling exactly
        `budget` tokens; the last one is cut. Returns [] for budget 0."""
        if budget < 0:
            raise DataError(f"haystack budget must be >= 0 tokens, got {budget}")
        pieces, total = [], 0
        i = int(rng.integers(len(self.ids)))
        while total < budget:
            piece = self.ids[i % len(self.ids)][: budget - total]
            pieces.append(piece)
            total += len(piece)
            i += 1
        return pieces


def make_haystack(kind: str, tokenizer, text_path: str | Path | None = None) -> Haystack:
    """A haystack of `kind` tokenized with `tokenizer` (module docstring).

    essay: `text_path` (a UTF-8 text file) if given, else the built-in corpus.
    """
    if kind not in HAYSTACK_KINDS:
        raise DataError(f"unknown haystack kind '{kind}'; choose one of {', '.join(HAYSTACK_KINDS)}")
    if kind == "noise":
        sentences, source = split_sentences(NOISE_PASSAGE), "RULER noise passage"
    elif text_path is not None:
        path = Path(text_path)
        if not path.is_file():
            raise DataError(f"haystack file {path} does not exist; give a UTF-8 text file "
                            "(eval.py --haystack FILE) or leave it out for the built-in corpus")
        sentences, source = _essay_sentences([path.read_text(encoding="utf-8", errors="replace")]), str(path)
    else:
        from zoo.data.builtin import builtin_corpus

        sentences, source = _essay_sentences(builtin_corpus()), "builtin corpus"
    if not sentences:
        raise DataError(f"the haystack text from {source} has no usable sentences "
                        f"({_MIN_WORDS}-{_MAX_WORDS} words ending in . ! or ?)")
    ids = [np.asarray(x, np.int32) for x in tokenizer.encode_batch([" " + s for s in sentences])]
    keep = [i for i, x in enumerate(ids) if len(x)]
    return Haystack(kind, source, [sentences[i] for i in keep], [ids[i] for i in keep])


def insert_at_boundaries(pieces: list[np.ndarray], inserts: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
    """Inserts `(boundary, ids)` pairs between haystack pieces: boundary b goes before piece b
    (0 = at the start, len(pieces) = at the end). Inserts at the same boundary keep their order."""
    out = []
    ordered = sorted(range(len(inserts)), key=lambda j: (inserts[j][0], j))
    j = 0
    for b in range(len(pieces) + 1):
        while j < len(ordered) and inserts[ordered[j]][0] == b:
            out.append(inserts[ordered[j]][1])
            j += 1
        if b < len(pieces):
            out.append(pieces[b])
    return out


def depth_boundary(pieces: list[np.ndarray], depth: float) -> int:
    """The boundary whose token offset is closest to `depth` (0..1) of the pieces' total."""
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]) if pieces else np.zeros(1)
    return int(np.argmin(np.abs(offsets - depth * offsets[-1])))


@dataclasses.dataclass
class PromptSample:
    """One long-context sample.

    prompt: int32 [length] ids (exactly the requested length unless the task has no haystack).
    answers: strings the reply must contain (RULER) or the target label (BABILong).
    question: the question text (BABILong's scorer ignores labels the question mentions).
    """

    task: str
    prompt: np.ndarray
    answers: tuple[str, ...]
    question: str
    length: int
    depth: float | None = None


def too_short(task: str, length: int, needed: int) -> DataError:
    return DataError(f"{task} at length {length} tokens: the needles, template and question alone "
                     f"take {needed} tokens; use lengths >= {needed} (--lengths)")

"""Scoring rules of the public long-context benchmarks, on decoded model replies.

RULER (`scripts/eval/synthetic/constants.py`):
    string_match_all   fraction of the reference strings found in the reply (case-insensitive),
                       averaged over samples; RULER reports it x100, we keep it in [0, 1].
    string_match_part  1 if any reference string is found.
BABILong (`babilong/metrics.py`): a reply is correct iff the set of task labels it mentions in
    its first sentence, minus labels the question itself mentions, is exactly the target set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def string_match_all(reply: str, references: Sequence[str]) -> float:
    """Fraction of `references` that occur in `reply`, case-insensitive."""
    if not references:
        raise ValueError("string_match_all needs at least one reference string")
    low = reply.lower()
    return sum(r.lower() in low for r in references) / len(references)


def string_match_part(reply: str, references: Sequence[str]) -> float:
    """1.0 if any of `references` occurs in `reply` (case-insensitive), else 0.0."""
    if not references:
        raise ValueError("string_match_part needs at least one reference string")
    low = reply.lower()
    return float(any(r.lower() in low for r in references))


def _mentioned(text: str, labels: Sequence[str]) -> set[str]:
    low = text.lower()
    return {lab for lab in labels if re.search(rf"\b{re.escape(lab.lower())}\b", low)}


def first_sentence(reply: str) -> str:
    """The reply up to its first sentence end or newline (BABILong scores only that)."""
    reply = reply.strip()
    return re.split(r"[.!?\n]", reply, maxsplit=1)[0] if reply else ""


def babilong_correct(reply: str, targets: Sequence[str], question: str, labels: Sequence[str]) -> float:
    """1.0 iff the labels named in the reply's first sentence, minus those named in the
    question, are exactly `targets` (BABILong's label-set rule)."""
    said = _mentioned(first_sentence(reply), labels) - _mentioned(question, labels)
    return float(said == {t for t in targets})

"""Fixtures of the data-package tests: an isolated cache root and small real English corpora."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Nothing a test does may write into the user's ~/.cache/memzoo."""
    monkeypatch.setenv("MEMZOO_CACHE", str(tmp_path_factory.getbasetemp() / "memzoo-cache"))


def _topics(max_chars: int) -> list[str]:
    from pydoc_data.topics import topics

    docs, total = [], 0
    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) < 200:
            continue
        if total + len(text) > max_chars:
            break
        docs.append(text)
        total += len(text)
    return docs


@pytest.fixture(scope="session")
def topic_texts() -> list[str]:
    """About 150 KB of English reference text (pydoc topics), a few dozen documents."""
    docs = _topics(150_000)
    assert len(docs) >= 10
    return docs

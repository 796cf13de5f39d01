"""The built-in corpus: English reference documentation that ships with Python itself.

Every CPython install carries a few MB of edited English prose: the language reference topics of
`help()` (`pydoc_data.topics`) and the docstrings of the standard library. That makes a corpus
that needs no download and no extra files, good enough for the quickstart and smoke training.

Documents, in a fixed order:
  1. one per pydoc topic (sorted by topic name);
  2. one per stdlib module (sorted by path): the module docstring, then the docstrings of its
     classes and functions (nested ones too, in source order), joined by blank lines.
Modules are read with `ast` and never imported (importing `antigravity` opens a web browser,
`this` prints, others need a display...). Test packages, `site-packages`, `pydoc_data` itself
(already in 1.) and files that do not parse are skipped; documents under
`MIN_DOCUMENT_CHARS` characters are dropped. The exact text depends on the Python version.

Extracting takes a few seconds, so the result is also kept on disk under the memzoo cache
(`builtin/<key>.json`), keyed by the Python version, the stdlib location and every source
file's size and mtime; a changed install gets a new key.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
import sysconfig
import warnings
from pathlib import Path

from zoo.data.cache import atomic_write_bytes, default_cache_dir

MIN_DOCUMENT_CHARS = 200
EXTRACTION_VERSION = 1  # bump when the extraction rules change, to invalidate disk caches

# Directory names (at any depth below the stdlib root) whose files are not reference prose.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                        "pydoc_data", "__pycache__"})
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(tree: ast.Module) -> list[str]:
    """Module docstring, then class / function docstrings depth-first in source order."""
    out = []

    def visit(node: ast.AST) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append(doc)
        for child in getattr(node, "body", ()):
            if isinstance(child, _DEFINITIONS):
                visit(child)
            elif isinstance(child, (ast.If, ast.Try)):  # definitions under `if` / `try` blocks
                for block in (child.body, child.orelse, getattr(child, "finalbody", ())):
                    for grandchild in block:
                        if isinstance(grandchild, _DEFINITIONS):
                            visit(grandchild)

    visit(tree)
    return out


def _stdlib_sources(stdlib: Path) -> list[Path]:
    """Sorted .py files under `stdlib`, not descending into `_SKIP_DIRS` (site-packages alone
    can hold thousands of files)."""
    found = []
    for folder, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        found.extend(Path(folder) / f for f in files if f.endswith(".py"))
    return sorted(found)


def _module_documents(sources: list[Path]) -> list[str]:
    docs = []
    for path in sources:
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning for odd escapes on newer Pythons
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
            continue  # e.g. lib2to3 test data written in Python 2
        text = "\n\n".join(_docstrings(tree))
        if len(text) >= MIN_DOCUMENT_CHARS:
            docs.append(text)
    return docs


def _topic_documents() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return []
    docs = [topics[name].strip() for name in sorted(topics)]
    return [d for d in docs if len(d) >= MIN_DOCUMENT_CHARS]


def _cache_key(stdlib: Path, sources: list[Path]) -> str:
    digest = hashlib.sha256(f"{EXTRACTION_VERSION}|{sys.version}|{stdlib}".encode())
    for path in sources:
        stat = path.stat()
        digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def _builtin_corpus() -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = _stdlib_sources(stdlib)
    cached = default_cache_dir() / "builtin" / f"{_cache_key(stdlib, sources)}.json"
    try:
        docs = json.loads(cached.read_text())
        if isinstance(docs, list) and all(isinstance(d, str) for d in docs):
            return tuple(docs)
    except (OSError, ValueError):
        pass  # missing or unreadable: extract again
    docs = _topic_documents() + _module_documents(sources)
    try:
        atomic_write_bytes(cached, json.dumps(docs).encode())
    except OSError:
        pass  # a read-only cache location only costs the extraction time next time
    return tuple(docs)


def builtin_corpus() -> list[str]:
    """The built-in corpus as a list of documents (a new list each call; the text is computed
    once per process, a few seconds on one core). Raises a RuntimeError if this Python install
    ships neither pydoc topics nor stdlib sources."""
    docs = _builtin_corpus()
    if not docs:
        raise RuntimeError("the built-in corpus is empty: this Python install ships neither "
                           "pydoc_data.topics nor standard-library sources; use data.source=files")
    return list(docs)

"""Document sources (built-in corpus, local files) and the train / held-out split."""

from __future__ import annotations

import json
import os

import pytest

from zoo.config import DataConfig
from zoo.data import builtin_corpus
from zoo.data.errors import DataError
from zoo.data.sources import load_documents, split_documents


def _hf_flags() -> tuple:
    import datasets
    import huggingface_hub.constants

    return (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
            os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE"))


def test_builtin_corpus_is_real_deterministic_text():
    from pydoc_data.topics import topics

    docs = builtin_corpus()
    assert len(docs) > 100 and sum(map(len, docs)) > 500_000
    assert all(isinstance(d, str) and len(d) >= 200 for d in docs)
    assert topics["assert"].strip() in docs  # pydoc topics come first, by name
    # One document per stdlib module: the json package's docstring starts its document.
    assert any(d.startswith("JSON (JavaScript Object Notation)") for d in docs)
    again = builtin_corpus()
    assert again == docs and again is not docs  # same text, a fresh list each call
    again.clear()
    assert builtin_corpus() == docs
    assert load_documents(DataConfig(source="builtin", max_documents=5)) == docs[:5]


def _files_cfg(paths, **kw) -> DataConfig:
    return DataConfig(source="files", paths=tuple(str(p) for p in paths), **kw)


def test_local_txt_jsonl_json_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first document\nwith two lines\n")
    (tmp_path / "b.txt").write_text("second document")
    (tmp_path / "blank.txt").write_text("   \n")
    with open(tmp_path / "c.jsonl", "w") as f:
        for row in [{"text": "row one", "id": 1}, {"text": None, "id": 2},
                    {"text": "row three", "id": 3}]:
            f.write(json.dumps(row) + "\n")
    (tmp_path / "d.json").write_text(json.dumps({"body": "json body"}) + "\n")
    pq.write_table(pa.table({"content": ["parquet one", "parquet two"], "n": [1, 2]}),
                   tmp_path / "e.parquet")

    flags_before = _hf_flags()
    cache = tmp_path / "cache"
    paths = [tmp_path / n for n in ("a.txt", "blank.txt", "c.jsonl", "b.txt")]
    assert load_documents(_files_cfg(paths), cache_dir=cache) == [
        "first document\nwith two lines\n", "row one", "row three", "second document"]
    assert load_documents(_files_cfg(paths, max_documents=2), cache_dir=cache) == [
        "first document\nwith two lines\n", "row one"]
    assert load_documents(_files_cfg([tmp_path / "e.parquet"], text_field="content")) == [
        "parquet one", "parquet two"]
    assert load_documents(_files_cfg([tmp_path / "d.json"], text_field="body"),
                          cache_dir=cache) == ["json body"]

    # The offline switch does not outlive the local reads.
    assert _hf_flags() == flags_before
    (tmp_path / "f.json").write_text(json.dumps([{"text": "array one"}, {"text": "array two"}]))
    assert load_documents(_files_cfg([tmp_path / "f.json"])) == ["array one", "array two"]
    (tmp_path / "broken.jsonl").write_text('{"text": "no closing quote')
    with pytest.raises(DataError, match=r"could not read '.*broken.jsonl' as json"):
        load_documents(_files_cfg([tmp_path / "broken.jsonl"]))
    with pytest.raises(DataError, match=r"no field 'text'; available fields: content, n"):
        load_documents(_files_cfg([tmp_path / "e.parquet"]), cache_dir=cache)
    with pytest.raises(DataError, match=r"row 0 field 'id' is a int, not text"):
        load_documents(_files_cfg([tmp_path / "c.jsonl"], text_field="id"), cache_dir=cache)


def test_bad_file_inputs(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "table.csv").write_text("text\nhello\n")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"data.paths: '.*nope.txt' does not exist"):
        load_documents(_files_cfg([tmp_path / "ok.txt", tmp_path / "nope.txt"]))
    with pytest.raises(DataError, match=r"unsupported extension '.csv'; supported: .txt, .jsonl"):
        load_documents(_files_cfg([tmp_path / "table.csv"]))
    with pytest.raises(DataError, match="is not a file"):
        load_documents(_files_cfg([tmp_path]))
    with pytest.raises(DataError, match="gave no documents"):
        load_documents(_files_cfg([tmp_path / "empty.txt"]))
    with pytest.raises(DataError, match="needs data.paths"):
        load_documents(_files_cfg([]))
    with pytest.raises(DataError, match="has no documents"):
        load_documents(DataConfig(source="mqar"))
    with pytest.raises(DataError, match="needs data.hf_name"):
        load_documents(DataConfig(source="hf", max_documents=10))
    with pytest.raises(DataError, match="set data.max_documents"):
        load_documents(DataConfig(source="hf", hf_name="some/dataset"))


def test_split_is_deterministic_and_disjoint():
    docs = [f"document {i}" for i in range(50)]
    train, held = split_documents(docs, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    assert set(train).isdisjoint(held) and sorted(train + held) == sorted(docs)
    assert train == sorted(train, key=docs.index) and held == sorted(held, key=docs.index)
    assert (train, held) == split_documents(docs, 0.1, seed=3)
    assert held != split_documents(docs, 0.1, seed=4)[1]
    assert len(split_documents(docs, 0.001, seed=0)[1]) == 1  # ceil, at least one
    assert split_documents(docs, 0.0, seed=0) == (docs, [])
    assert split_documents(["only"], 0.5, seed=0) == (["only"], [])
    assert split_documents(["a", "b"], 0.9, seed=0)[0] != []  # training keeps a document
    with pytest.raises(DataError, match=r"heldout_fraction must be in \[0, 1\)"):
        split_documents(docs, 1.0, seed=0)


def test_builtin_corpus_is_cached_on_disk(tmp_path, monkeypatch):
    from zoo.data import builtin

    monkeypatch.setenv("MEMZOO_CACHE", str(tmp_path))
    builtin._builtin_corpus.cache_clear()
    first = builtin_corpus()
    (cached,) = (tmp_path / "builtin").glob("*.json")
    builtin._builtin_corpus.cache_clear()

    def no_extraction(*_):
        raise AssertionError("the corpus was extracted again instead of read from the disk cache")

    monkeypatch.setattr(builtin, "_module_documents", no_extraction)
    assert builtin_corpus() == first
    cached.write_text("{not json")  # a corrupt cache entry is rebuilt, not trusted
    builtin._builtin_corpus.cache_clear()
    monkeypatch.undo()
    monkeypatch.setenv("MEMZOO_CACHE", str(tmp_path))
    assert builtin_corpus() == first
    builtin._builtin_corpus.cache_clear()

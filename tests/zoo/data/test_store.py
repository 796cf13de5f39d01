"""The shard store: prepared once, read like the in-memory pipeline; resume; bad inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from zoo.config import Config, DataConfig, ModelConfig
from zoo.data import DataError, make_data, pack_documents
from zoo.data.iterator import StoreBatchIterator
from zoo.data.prepare import prepare_store
from zoo.data.store import ShardStore


def _config(**data) -> Config:
    base = dict(source="builtin", tokenizer="bytes", max_documents=80, seq_len=64, batch_size=4,
                heldout_fraction=0.1, seed=3)
    return Config(model=ModelConfig(vocab_size=259), data=DataConfig(**{**base, **data}))


def _store(tmp_path, name="store", shard_tokens=1 << 30, **data):
    cfg = _config(**data)
    prepare_store(cfg, tmp_path / name, shard_tokens=shard_tokens, cache_dir=tmp_path / "cache", progress=False)
    return cfg, tmp_path / name


def _all_rows(rows):
    return rows.read(np.arange(rows.num_rows))


def test_one_shard_store_gives_the_in_memory_rows(tmp_path, align=16):
    cfg, path = _store(tmp_path, align_documents=align)
    memory = make_data(_config(align_documents=align), cache_dir=tmp_path / "cache")
    stored = make_data(_config(align_documents=align, shards_dir=str(path)), cache_dir=tmp_path / "cache")
    assert stored.info["source"] == "shards" and len(ShardStore(path).shards("train")) == 1
    train = _all_rows(stored.train._source)
    for key, value in memory.train.packed.items():
        np.testing.assert_array_equal(train[key], value, err_msg=key)
    held_mem, held_store = memory.heldout_batches(8), stored.heldout_batches(8)
    assert len(held_mem) == len(held_store) > 0
    for a, b in zip(held_mem, held_store):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_many_shards_keep_every_document_and_pack_per_shard(tmp_path):
    cfg, path = _store(tmp_path, shard_tokens=20_000, align_documents=16)
    store = ShardStore(path)
    shards = store.shards("train")
    assert len(shards) > 3
    docs = []
    for s in shards:
        tokens = np.load(path / f"{s['name']}.tokens.npy")
        offsets = np.load(path / f"{s['name']}.docs.npy")
        docs.extend(tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1))
    memory = make_data(_config(align_documents=16), cache_dir=tmp_path / "cache")
    from zoo.data.sources import load_documents, split_documents

    train_docs, _ = split_documents(load_documents(cfg.data), 0.1, 3)
    assert docs == memory.tokenizer.encode_batch(train_docs)  # the same documents, tokens and order
    # Rows never span two shards: the store's rows are each shard packed on its own.
    expected, start = [], 0
    for s in shards:
        expected.append(pack_documents(docs[start:start + s["documents"]], 64, 1, 2, 0, align=16))
        start += s["documents"]
    rows = _all_rows(store.rows("train", 64, 16, 1, 2, 0))
    for key in rows:
        np.testing.assert_array_equal(rows[key], np.concatenate([e[key] for e in expected]), err_msg=key)


def test_resume_is_exact_across_a_shard_boundary(tmp_path):
    _, path = _store(tmp_path, shard_tokens=20_000)
    rows = ShardStore(path).rows("train", 64, 1, 1, 2, 0)
    first_shard_rows = int(rows._row_starts[1])
    for shuffle in (False, True):
        it = StoreBatchIterator(rows, batch_size=4, seed=5, shuffle=shuffle)
        for _ in range(first_shard_rows // 4 - 1):  # stop just before the batch that crosses shard 0 -> 1
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        assert set(state) >= {"epoch", "position"} and len(json.dumps(state)) < 400  # O(1) in the corpus
        expected = [next(it) for _ in range(3)]
        again = StoreBatchIterator(rows, batch_size=4, seed=5, shuffle=shuffle)
        again.set_state(state)
        for want in expected:
            got = next(again)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
    # An epoch of the shuffled iterator visits every row exactly once.
    it = StoreBatchIterator(rows, batch_size=4, seed=5)
    ids = np.concatenate([it._advance() for _ in range(rows.num_rows // 4)])
    assert sorted(ids.tolist()) == list(range(len(ids))) and len(ids) >= rows.num_rows - 3


def test_interrupted_prepare_resumes_to_the_same_store(tmp_path):
    cfg, whole = _store(tmp_path, "whole", shard_tokens=20_000)
    cache = tmp_path / "cache"
    assert prepare_store(cfg, tmp_path / "cut", shard_tokens=20_000, cache_dir=cache, progress=False,
                         stop_after_shards=2) == {}
    with pytest.raises(DataError, match="partial store.*rerun the same command"):
        ShardStore(tmp_path / "cut")
    kept = sorted(p.name for p in (tmp_path / "cut" / "train").iterdir())
    assert kept[:4] == ["shard-00000.docs.npy", "shard-00000.tokens.npy", "shard-00001.docs.npy",
                        "shard-00001.tokens.npy"]
    mtime = (tmp_path / "cut" / "train" / "shard-00000.tokens.npy").stat().st_mtime_ns
    prepare_store(cfg, tmp_path / "cut", shard_tokens=20_000, cache_dir=cache, progress=False)
    assert (tmp_path / "cut" / "train" / "shard-00000.tokens.npy").stat().st_mtime_ns == mtime  # not rewritten
    a = ShardStore(whole).manifest
    b = ShardStore(tmp_path / "cut").manifest
    assert a["splits"] == b["splits"]
    for shard in a["splits"]["train"]["shards"]:
        for part in ("tokens", "docs"):
            name = f"{shard['name']}.{part}.npy"
            assert (whole / name).read_bytes() == (tmp_path / "cut" / name).read_bytes()


def test_bad_stores_fail_before_training_with_the_file_and_the_fix(tmp_path):
    cfg, path = _store(tmp_path, shard_tokens=20_000)

    def load(store, **data):
        return make_data(_config(source="shards", shards_dir=str(store), **data), cache_dir=tmp_path / "cache")

    with pytest.raises(FileNotFoundError, match="does not exist.*prepare_data.py"):
        load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="tokenized with bytes.*data.tokenizer=bytes"):
        make_data(Config(model=ModelConfig(vocab_size=512),
                         data=DataConfig(source="shards", shards_dir=str(path), tokenizer="sentencepiece")))
    with pytest.raises(DataError, match=r"data.seq_len=60000 is longer than the store .* supports"):
        load(path, seq_len=60000)
    with pytest.raises(DataError, match="other data settings.*differing: seed"):
        make_data(_config(seed=4, shards_dir=str(path)), cache_dir=tmp_path / "cache")

    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    shard = broken / "train" / "shard-00001.tokens.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="shard-00001.tokens.npy.*truncated"):
        load(broken)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.tokens.npy.*missing"):
        load(broken)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*nothing there is overwritten"):
        prepare_store(cfg, tmp_path / "other", cache_dir=tmp_path / "cache", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_streamed_source_is_split_by_hash_and_trains_its_tokenizer_on_the_stream(tmp_path, monkeypatch,
                                                                                   topic_texts):
    """data.source=hf without the network: the hub stream replaced by local documents."""
    import zoo.data.sources as sources
    from zoo.data.prepare import hashed_heldout

    streamed = []

    def fake_stream(data_cfg, limit):
        for text in topic_texts[:limit]:
            streamed.append(text)
            yield text

    monkeypatch.setattr(sources, "stream_hub_documents", fake_stream)
    cfg = Config(model=ModelConfig(vocab_size=512), data=DataConfig(
        source="hf", hf_name="someone/corpus", max_documents=30, tokenizer="sentencepiece", seq_len=64,
        batch_size=2, heldout_fraction=0.2, seed=1))
    manifest = prepare_store(cfg, tmp_path / "hub", shard_tokens=5_000, cache_dir=tmp_path / "cache", progress=False)
    n = min(30, len(topic_texts))
    held = [hashed_heldout(i, 0.2, 1) for i in range(n)]
    assert manifest["split_rule"] == "hash" and 0 < sum(held) < n
    assert manifest["splits"]["heldout"]["documents"] == sum(held)
    assert manifest["splits"]["train"]["documents"] == n - sum(held)
    data = make_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shards_dir=str(tmp_path / "hub"))))
    assert data.tokenizer.vocab_size == 512 and data.info["source"] == "shards"
    batch = next(data.train)
    assert batch["inputs"].shape == (2, 64) and batch["loss_mask"].sum() > 0
    text = data.tokenizer.decode(data.heldout_batches(2, 1)[0]["inputs"][0])
    first_held = topic_texts[held.index(True)]
    assert text.strip()[:40] in first_held

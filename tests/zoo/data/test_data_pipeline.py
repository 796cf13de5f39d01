"""make_data end to end: local files -> tokenizer -> packed batches; MQAR; resume; errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zoo.config import Config, DataConfig, ModelConfig, MQARConfig
from zoo.data import ByteTokenizer, DataBundle, SentencePieceTokenizer, load_tokenizer, make_data
from zoo.data.errors import DataError
from zoo.data.synthetic.mqar import MQAR_VERSION

KEYS = ("inputs", "targets", "segment_ids", "loss_mask")


def _config(vocab_size: int, **data) -> Config:
    # Built directly (not through zoo.config.from_dict) so these tests do not import the models.
    return Config(model=ModelConfig(vocab_size=vocab_size), data=DataConfig(**data))


@pytest.fixture(scope="module")
def corpus_files(topic_texts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    paths = []
    for i, text in enumerate(topic_texts):
        path = folder / f"doc{i:03d}.txt"
        path.write_text(text)
        paths.append(str(path))
    return paths


def test_files_with_sentencepiece(corpus_files, topic_texts, tmp_path):
    cfg = _config(512, source="files", paths=tuple(corpus_files), tokenizer="sentencepiece",
                  seq_len=64, batch_size=4, heldout_fraction=0.1, seed=1)
    data = make_data(cfg, cache_dir=tmp_path)
    assert isinstance(data, DataBundle) and isinstance(data.tokenizer, SentencePieceTokenizer)
    assert data.tokenizer.vocab_size == 512
    assert data.info["documents_heldout"] == int(np.ceil(0.1 * len(topic_texts)))
    assert data.info["documents_train"] + data.info["documents_heldout"] == len(topic_texts)
    assert data.tokenizer.path.parent == tmp_path / "tokenizers"

    batch = next(data.train)
    assert {k: batch[k].shape for k in KEYS} == {k: (4, 64) for k in KEYS}
    assert batch["inputs"].max() < 512 and batch["loss_mask"].sum() > 0
    row = batch["inputs"][0][batch["segment_ids"][0] == batch["segment_ids"][0, -1]]
    # Real text comes back (a row edge may cut a multi-byte character: U+FFFD there).
    text = data.tokenizer.decode(row).strip("\ufffd")
    assert len(text) > 10 and any(text in t for t in topic_texts)

    held = data.heldout_batches(batch_size=8)
    rows = data.info["rows_heldout"]
    assert len(held) == -(-rows // 8)
    assert all(h["inputs"].shape == (8, 64) for h in held)
    padding_rows = len(held) * 8 - rows
    if padding_rows:
        assert (held[-1]["loss_mask"][8 - padding_rows:] == 0).all()
    assert len(data.heldout_batches(8, max_batches=1)) == 1
    again = data.heldout_batches(8)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(held, again) for k in KEYS)

    # Built again from the same files: the tokenizer comes from the cache, batches are identical.
    second = make_data(cfg, cache_dir=tmp_path)
    assert second.info["tokenizer_from_cache"]
    for a in [batch] + [next(data.train) for _ in range(3)]:
        b = next(second.train)
        assert all(np.array_equal(a[k], b[k]) for k in KEYS)

    # Resume from a JSON-saved state.
    state = json.loads(json.dumps(data.train.get_state()))
    expected = [next(data.train) for _ in range(2)]
    resumed = make_data(cfg, cache_dir=tmp_path)
    resumed.train.set_state(state)
    for a in expected:
        b = next(resumed.train)
        assert all(np.array_equal(a[k], b[k]) for k in KEYS)

    data.tokenizer.save(tmp_path / "workdir")
    assert load_tokenizer(tmp_path / "workdir").model_proto == data.tokenizer.model_proto


def test_files_with_bytes_and_no_heldout(corpus_files, topic_texts, tmp_path):
    cfg = _config(300, source="files", paths=tuple(corpus_files[:3]), tokenizer="bytes",
                  seq_len=32, batch_size=2, heldout_fraction=0.0)
    data = make_data(cfg, cache_dir=tmp_path)
    assert isinstance(data.tokenizer, ByteTokenizer)
    assert data.heldout_batches(4) == []
    text = data.tokenizer.decode(data.train.packed["inputs"].reshape(-1))
    assert text == "".join(topic_texts[:3])  # bos / eos / padding dropped by decode


def test_mqar_bundle():
    cfg = _config(64, source="mqar", seq_len=32, batch_size=4, seed=3,
                  mqar=MQARConfig(num_pairs=4))
    data = make_data(cfg)
    assert data.info["task_version"] == MQAR_VERSION
    batch = next(data.train)
    assert batch["inputs"].shape == (4, 32) and (batch["loss_mask"].sum(1) == 4).all()
    assert batch["inputs"].max() < 64

    held = data.heldout_batches(batch_size=6, max_batches=3)
    assert len(held) == 3 and held[0]["inputs"].shape == (6, 32)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(held, data.heldout_batches(6, 3))
               for k in KEYS)
    assert len(data.heldout_batches(6)) == 16
    train_rows = {tuple(r) for r in batch["inputs"]}
    assert not any(tuple(r) in train_rows for h in held for r in h["inputs"])

    state = json.loads(json.dumps(data.train.get_state()))
    expected = [next(data.train) for _ in range(2)]
    resumed = make_data(cfg)
    resumed.train.set_state(state)
    assert all(np.array_equal(a[k], next_b[k]) for a in expected
               for next_b in [next(resumed.train)] for k in KEYS)
    other = make_data(_config(64, source="mqar", seq_len=32, batch_size=4, seed=3,
                              mqar=MQARConfig(num_pairs=5)))
    with pytest.raises(DataError, match="name"):
        other.train.set_state(state)


def test_too_little_data_for_a_batch(corpus_files, tmp_path):
    cfg = _config(300, source="files", paths=(corpus_files[0],), tokenizer="bytes",
                  seq_len=512, batch_size=64, heldout_fraction=0.0)
    with pytest.raises(DataError, match=r"only \d+ rows .*data.batch_size=64"):
        make_data(cfg, cache_dir=tmp_path)
    with pytest.raises(DataError, match="seq_len >= 4 \\* num_pairs"):
        make_data(_config(64, source="mqar", seq_len=16, mqar=MQARConfig(num_pairs=8)))

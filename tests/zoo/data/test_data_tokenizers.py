"""Byte and SentencePiece tokenizers: round trips, training cache, save / load, build errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zoo.config import DataConfig
from zoo.data import ByteTokenizer, SentencePieceTokenizer, build_tokenizer, load_tokenizer
from zoo.data.errors import DataError

SAMPLES = [
    "Hello, world!",
    "  leading and  double  spaces, tabs\tand\nnewlines\n\n",
    "naïve café — 日本語 テキスト 🙂 (outside the training characters)",
    "digits 1234567890 and x**2 + y[0] == {'a': 1}",
    "",
]
VOCAB = 400


def test_byte_tokenizer_round_trip_and_ids(tmp_path):
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids == [b + 3 for b in text.encode("utf-8")]
        assert tok.decode(ids) == text
        assert tok.decode(np.array([1, *ids, 2, 0, 0], np.int32)) == text  # specials skipped
    assert tok.decode([3 + 0xFF]) == "\ufffd"  # invalid UTF-8 is replaced, not raised
    assert tok.decode([500, 3 + ord("a")]) == "a"  # ids past the vocabulary are skipped
    assert tok.encode_batch(["ab", "c"]) == [tok.encode("ab"), tok.encode("c")]
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    with pytest.raises(DataError, match="integer token ids"):
        tok.decode([1.5])


@pytest.fixture(scope="module")
def sp_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sp-cache")


@pytest.fixture(scope="module")
def sp_tok(topic_texts, sp_cache):
    return SentencePieceTokenizer.train(topic_texts, VOCAB, sp_cache)


def test_sentencepiece_trains_and_round_trips(sp_tok, topic_texts):
    tok = sp_tok
    assert tok.vocab_size == VOCAB
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert not tok.from_cache and tok.path is not None and tok.path.name.endswith(".model")
    for text in SAMPLES + topic_texts[:3]:
        ids = tok.encode(text)
        assert all(3 < i < VOCAB for i in ids)  # no bos / eos / pad / unk (byte fallback)
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id, *ids, tok.eos_id, 0]) == text
    # Merges were learned (vocab 400 leaves ~40 after bytes and characters): fewer tokens
    # than bytes.
    text = topic_texts[0]
    assert len(tok.encode(text)) < 0.8 * len(text.encode())
    assert tok.encode_batch(topic_texts[:4]) == [tok.encode(t) for t in topic_texts[:4]]


def test_second_training_hits_the_cache(sp_tok, topic_texts, sp_cache, monkeypatch):
    import sentencepiece

    mtime = sp_tok.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("SentencePiece trained again although the model is cached")

    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", no_training)
    again = SentencePieceTokenizer.train(list(topic_texts), VOCAB, sp_cache)
    assert again.from_cache and again.path == sp_tok.path
    assert again.model_proto == sp_tok.model_proto
    assert sp_tok.path.stat().st_mtime_ns == mtime
    assert len(list(sp_cache.glob("*.model"))) == 1
    # A different corpus or vocabulary is a different cache entry (and would train).
    with pytest.raises(AssertionError, match="trained again"):
        SentencePieceTokenizer.train(topic_texts[:-1], VOCAB, sp_cache)


def test_save_and_load_round_trip(sp_tok, tmp_path):
    sp_tok.save(tmp_path / "run")
    assert (tmp_path / "run" / "tokenizer.model").is_file()
    loaded = load_tokenizer(tmp_path / "run")
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.model_proto == sp_tok.model_proto
    assert loaded.encode(SAMPLES[2]) == sp_tok.encode(SAMPLES[2])
    assert isinstance(load_tokenizer(tmp_path / "run" / "tokenizer.model"), SentencePieceTokenizer)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in '.*nowhere'.*does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(DataError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(FileNotFoundError, match="model file .* is missing"):
        load_tokenizer(tmp_path)


def test_training_errors(topic_texts, tmp_path):
    with pytest.raises(DataError, match=r">= 261"):
        SentencePieceTokenizer.train(topic_texts, 256, tmp_path)
    with pytest.raises(DataError, match=r"too small .* at least \d+"):
        many_chars = "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞß" * 3
        SentencePieceTokenizer.train(topic_texts + [many_chars], 300, tmp_path)
    with pytest.raises(DataError, match="no text"):
        SentencePieceTokenizer.train(["", "   \n  "], 300, tmp_path)
    with pytest.raises(DataError, match="single string"):
        SentencePieceTokenizer.train("just one string", 300, tmp_path)
    with pytest.raises(DataError, match="too large"):
        SentencePieceTokenizer.train(["a tiny corpus", "of two lines"], 4000, tmp_path)


def test_build_tokenizer_choices_and_errors(sp_tok, topic_texts, sp_cache, tmp_path):
    bytes_cfg = DataConfig(tokenizer="bytes")
    assert isinstance(build_tokenizer(bytes_cfg, 300, None), ByteTokenizer)
    with pytest.raises(DataError, match="vocab_size >= 259"):
        build_tokenizer(bytes_cfg, 100, None)
    with pytest.raises(DataError, match="only used with data.tokenizer=sentencepiece"):
        build_tokenizer(dataclasses.replace(bytes_cfg, tokenizer_path="x.model"), 300, None)

    sp_cfg = DataConfig(tokenizer="sentencepiece")
    built = build_tokenizer(sp_cfg, VOCAB, topic_texts, sp_cache)
    assert built.from_cache and built.model_proto == sp_tok.model_proto
    with pytest.raises(DataError, match="needs the training texts"):
        build_tokenizer(sp_cfg, VOCAB, None, sp_cache)

    with pytest.raises(FileNotFoundError,
                       match=r"data.tokenizer_path='.*missing.model' does not exist"):
        build_tokenizer(dataclasses.replace(sp_cfg, tokenizer_path=str(tmp_path / "missing.model")),
                        VOCAB, None)
    from_path = dataclasses.replace(sp_cfg, tokenizer_path=str(sp_tok.path))
    assert build_tokenizer(from_path, VOCAB, None).model_proto == sp_tok.model_proto
    with pytest.raises(DataError, match=f"has {VOCAB} pieces .* set model.vocab_size={VOCAB}"):
        build_tokenizer(from_path, 512, None)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a valid SentencePiece model"):
        build_tokenizer(dataclasses.replace(sp_cfg, tokenizer_path=str(tmp_path / "junk.model")),
                        VOCAB, None)


def test_damaged_cache_entry_is_retrained(sp_tok, topic_texts, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / sp_tok.path.name).write_bytes(b"half a file")  # same key, unusable content
    tok = SentencePieceTokenizer.train(topic_texts, VOCAB, cache)
    assert not tok.from_cache and tok.model_proto == sp_tok.model_proto  # training is deterministic
    assert (cache / sp_tok.path.name).read_bytes() == sp_tok.model_proto

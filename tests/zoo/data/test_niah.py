"""Needle tasks and haystacks: exact lengths, each answer present exactly once, depths, seeds,
the training-row source, and clear errors."""

import dataclasses
import re

import numpy as np
import pytest

from zoo.config import Config, DataConfig, ModelConfig, NIAHConfig
from zoo.data import ByteTokenizer, DataError, make_data
from zoo.data.synthetic.haystack import (
    depth_boundary,
    insert_at_boundaries,
    make_haystack,
    split_sentences,
)
from zoo.data.synthetic.niah import NIAH_TASKS, niah_sample, niah_training_batch

TOK = ByteTokenizer()
ESSAY = (" ".join(f"Sentence number {w} talks about the weather and the sea today." for w in
                  ["one", "two", "three", "four", "five", "six", "seven", "eight"]) + "\n") * 4


@pytest.fixture(scope="module")
def haystacks(tmp_path_factory):
    path = tmp_path_factory.mktemp("hay") / "essay.txt"
    path.write_text(ESSAY)
    return {"noise": make_haystack("noise", TOK), "essay": make_haystack("essay", TOK, text_path=path)}


def sample(name, haystacks, length=1024, depth=0.5, seed=0):
    hay = haystacks[NIAH_TASKS[name].haystack]
    return niah_sample(name, np.random.default_rng(seed), TOK, hay, length, depth)


def test_split_sentences_and_insertion():
    assert split_sentences("The sky is blue.  It rains!\nWhy? no") == ["The sky is blue.", "It rains!", "Why? no"]
    a, b, c = (np.array([i]) for i in range(3))
    out = insert_at_boundaries([a, b], [(2, c), (0, c), (1, c)])
    assert [int(x[0]) for x in out] == [2, 0, 2, 1, 2]
    pieces = [np.zeros(10), np.zeros(10), np.zeros(80)]
    assert depth_boundary(pieces, 0.0) == 0 and depth_boundary(pieces, 0.2) == 2 and depth_boundary(pieces, 1.0) == 3


@pytest.mark.parametrize("budget", [0, 1, 57, 3000])
def test_haystack_fills_exact_budgets(haystacks, budget):
    pieces = haystacks["essay"].fill(np.random.default_rng(1), budget)
    assert sum(len(p) for p in pieces) == budget
    assert all(len(p) for p in pieces)


@pytest.mark.parametrize("name", sorted(NIAH_TASKS))
@pytest.mark.parametrize("length", [700, 2000])
def test_prompts_have_exact_length_and_answers_once(haystacks, name, length):
    task = NIAH_TASKS[name]
    s = sample(name, haystacks, length)
    assert s.prompt.dtype == np.int32 and s.prompt.shape == (length,)
    text = TOK.decode(s.prompt)
    assert len(s.answers) == task.values * task.queries
    for value in s.answers:
        assert text.count(value) == 1
        assert re.fullmatch(r"\d{7}" if task.value_kind == "numbers" else r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}",
                            value)
    needles = re.findall(r"One of the special magic \w+ for ([a-z]+-[a-z]+) is: (\S+)\.", text)
    assert len(needles) == task.keys * task.values
    asked = set(re.findall(r"[a-z]+-[a-z]+", s.question))
    assert len(asked) == task.queries and {v for k, v in needles if k in asked} == set(s.answers)
    assert text.rstrip().endswith("mentioned in the provided text are")


def test_depth_moves_the_needle(haystacks):
    def where(depth):
        s = sample("s_niah_2", haystacks, 3000, depth)
        text = TOK.decode(s.prompt)
        return text.index(s.answers[0]) / len(text)

    assert where(0.0) < 0.1 and 0.4 < where(0.5) < 0.6 and where(1.0) > 0.85


def test_seeds_reproduce(haystacks):
    a, b, c = (sample("mk_niah", haystacks, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.prompt, b.prompt)
    assert a.answers == b.answers and a.answers != c.answers


def test_errors(haystacks, tmp_path):
    with pytest.raises(DataError, match="use lengths >= "):
        sample("s_niah_1", haystacks, length=100)
    with pytest.raises(DataError, match="'noise' haystack"):
        niah_sample("s_niah_1", np.random.default_rng(0), TOK, haystacks["essay"], 1000, 0.5)
    with pytest.raises(DataError, match="unknown needle task 's_niah_9'"):
        niah_sample("s_niah_9", np.random.default_rng(0), TOK, haystacks["noise"], 1000, 0.5)
    with pytest.raises(DataError, match="depth"):
        sample("s_niah_1", haystacks, depth=1.5)
    with pytest.raises(DataError, match="does not exist"):
        make_haystack("essay", TOK, text_path=tmp_path / "nope.txt")


def test_training_rows_put_the_loss_on_the_answer(haystacks):
    batch = niah_training_batch(np.random.default_rng(0), 3, 900, "mv_niah", TOK, haystacks["essay"])
    assert all(batch[k].shape == (3, 900) for k in batch)
    for row in range(3):
        mask = batch["loss_mask"][row] > 0
        answer = batch["targets"][row][mask]
        assert answer[-1] == TOK.eos_id
        values = TOK.decode(answer[:-1]).strip().rstrip(".").replace(" and ", ", ").split(", ")
        prompt = TOK.decode(batch["inputs"][row][batch["segment_ids"][row] > 0])
        assert len(values) == 4 and all(prompt.count(v) == 2 for v in values)  # needle + the answer itself
        np.testing.assert_array_equal(batch["inputs"][row][1:], batch["targets"][row][:-1])


def test_niah_source_through_make_data(tmp_path):
    cfg = Config(model=ModelConfig(vocab_size=259),
                 data=DataConfig(source="niah", tokenizer="bytes", seq_len=512, batch_size=2,
                                 niah=NIAHConfig(task="s_niah_1")))
    data = make_data(cfg, cache_dir=tmp_path)
    batch = next(data.train)
    assert batch["inputs"].shape == (2, 512) and 8 <= batch["loss_mask"].sum(axis=1).min() <= 12
    assert len(data.heldout_batches(2, 1)) == 1 and data.info["task"] == "s_niah_1"
    short = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=128))
    with pytest.raises(DataError, match="data.seq_len=128 is too short for data.niah.task=s_niah_1"):
        make_data(short, cache_dir=tmp_path)

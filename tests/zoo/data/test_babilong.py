"""bAbI simulator (qa1-qa5) and BABILong samples: answers re-derived from the fact strings by an
independent parser, exact prompt lengths, facts in order, seeds, errors, and the BABILong scorer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from zoo.data.errors import DataError
from zoo.data.synthetic.babi import BABI_TASKS, BABI_VERSION, TASK_LABELS, babi_story
from zoo.data.synthetic.babilong import BABILONG_LENGTHS, BABILONG_VERSION, babilong_sample
from zoo.data.synthetic.haystack import make_haystack
from zoo.data.tokenizers import ByteTokenizer
from zoo.evaluation.scoring import babilong_correct

SEEDS = range(50)

# ---- an independent checker: parse the sentences, replay the world, answer the question ----

MOVE = re.compile(r"^(\w+) (?:moved|went back|went|journeyed|travelled) to the (\w+)\.$")
PICK = re.compile(r"^(\w+) (?:picked up|got|grabbed|took) the (\w+)\.$")
DROP = re.compile(r"^(\w+) (?:dropped|discarded|put down|left) the (\w+)\.$")
GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")
RELATION = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$")
STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}


def replay(facts: list[str]):
    """-> (person locations, object location after each fact, gives [(giver, obj, receiver)]).
    Asserts the story is physically consistent (pickups/gives where the object/receiver is)."""
    person: dict[str, str] = {}
    carried_by: dict[str, str] = {}
    lying: dict[str, str] = {}
    timeline: dict[str, list[str | None]] = {}
    gives = []

    def where(obj):
        return person[carried_by[obj]] if obj in carried_by else lying.get(obj)

    for fact in facts:
        if m := MOVE.match(fact):
            person[m[1]] = m[2]
        elif m := PICK.match(fact):
            who, obj = m[1], m[2]
            assert who in person and obj not in carried_by
            assert lying.get(obj, person[who]) == person[who]
            carried_by[obj] = who
        elif m := DROP.match(fact):
            who, obj = m[1], m[2]
            assert carried_by.pop(obj) == who
            lying[obj] = person[who]
        elif m := GIVE.match(fact):
            giver, obj, receiver = m[1], m[2], m[3]
            assert carried_by[obj] == giver and giver != receiver
            assert person[giver] == person.get(receiver)
            carried_by[obj] = receiver
            gives.append((giver, obj, receiver))
        else:
            raise AssertionError(f"unparsed fact {fact!r}")
        for obj in set(carried_by) | set(lying) | set(timeline):
            timeline.setdefault(obj, []).append(where(obj))
    return person, timeline, gives


def only(values) -> str:
    values = set(values)
    assert len(values) == 1, values
    return values.pop()


def answer_world(facts: list[str], question: str) -> str:
    person, timeline, gives = replay(facts)
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return person[m[1]]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        assert timeline[m[1]][-1] is not None
        return timeline[m[1]][-1]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        path = []
        for loc in timeline[m[1]]:
            if loc is not None and (not path or path[-1] != loc):
                path.append(loc)
        assert path.count(m[2]) == 1 and path.index(m[2]) > 0, path
        return path[path.index(m[2]) - 1]
    if m := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        return only(g for g, o, r in gives if (o, r) == (m[1], m[2]))
    if m := re.fullmatch(r"What did (\w+) give to (\w+)\?", question):
        return only(o for g, o, r in gives if (g, r) == (m[1], m[2]))
    if m := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question):
        return only(r for g, o, r in gives if (g, o) == (m[1], m[2]))
    if m := re.fullmatch(r"Who received the (\w+)\?", question):
        return only(r for g, o, r in gives if o == m[1])
    raise AssertionError(f"unparsed question {question!r}")


def answer_relations(facts: list[str], question: str) -> str:
    rels = [RELATION.match(f).groups() for f in facts]  # (x, d, y): x is d of y
    pos = {rels[0][2]: (0, 0)}
    while len(pos) < len({x for x, _, _ in rels} | {y for _, _, y in rels}):
        for x, d, y in rels:
            dx, dy = STEP[d]
            if y in pos and x not in pos:
                pos[x] = (pos[y][0] + dx, pos[y][1] + dy)
            elif x in pos and y not in pos:
                pos[y] = (pos[x][0] - dx, pos[x][1] - dy)
    assert len(set(pos.values())) == len(pos)  # geometry consistent: one cell per location
    for x, d, y in rels:
        dx, dy = STEP[d]
        assert pos[x] == (pos[y][0] + dx, pos[y][1] + dy)
    if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
        (dx, dy), at = STEP[m[1]], pos[m[2]]
        target = (at[0] + dx, at[1] + dy)
    elif m := re.fullmatch(r"What is the (\w+) (\w+) of\?", question):
        (dx, dy), at = STEP[m[2]], pos[m[1]]
        target = (at[0] - dx, at[1] - dy)
    else:
        raise AssertionError(f"unparsed question {question!r}")
    return only(name for name, p in pos.items() if p == target)


@pytest.mark.parametrize("task", BABI_TASKS)
def test_answers_follow_from_the_facts(task):
    sizes = []
    for seed in SEEDS:
        story = babi_story(task, np.random.default_rng(seed))
        assert story.task == task and story.facts and story.question.endswith("?")
        checker = answer_relations if task == "qa4" else answer_world
        assert checker(story.facts, story.question) == story.answer, (story.facts, story.question)
        assert story.answer in TASK_LABELS[task]
        assert story.supporting == sorted(set(story.supporting))
        assert story.supporting and 0 <= story.supporting[0] and story.supporting[-1] < len(story.facts)
        support = [story.facts[i] for i in story.supporting]
        assert any(re.search(rf"\b{story.answer}\b", f) for f in support)
        if task in ("qa1", "qa4"):  # these need no other facts to replay
            assert checker(support, story.question) == story.answer
        labels = TASK_LABELS[task]
        assert babilong_correct(story.answer, [story.answer], story.question, labels) == 1.0
        wrong = next(lab for lab in labels if lab != story.answer and lab not in story.question)
        assert babilong_correct(wrong, [story.answer], story.question, labels) == 0.0
        sizes.append(len(story.facts))
    lo, hi = {"qa1": (2, 10), "qa2": (6, 20), "qa3": (10, 30), "qa4": (2, 2), "qa5": (5, 15)}[task]
    assert lo <= min(sizes) and max(sizes) <= hi


def test_supporting_facts_qa1_is_the_last_move():
    for seed in SEEDS:
        story = babi_story("qa1", np.random.default_rng(seed))
        who = re.fullmatch(r"Where is (\w+)\?", story.question)[1]
        last = max(i for i, f in enumerate(story.facts) if f.startswith(who + " "))
        assert story.supporting == [last]


@pytest.mark.parametrize("task, n", [("qa1", 1), ("qa2", 2), ("qa3", 3), ("qa4", 5), ("qa5", 4), ("qa3", 40)])
def test_explicit_sizes(task, n):
    for seed in range(10):
        story = babi_story(task, np.random.default_rng(seed), num_facts=n)
        assert len(story.facts) == n
        checker = answer_relations if task == "qa4" else answer_world
        assert checker(story.facts, story.question) == story.answer


def test_babi_errors_and_determinism():
    with pytest.raises(DataError, match="qa1, qa2, qa3, qa4, qa5"):
        babi_story("qa6", np.random.default_rng(0))
    with pytest.raises(DataError, match="num_facts"):
        babi_story("qa4", np.random.default_rng(0), num_facts=6)
    a, b = (babi_story("qa5", np.random.default_rng(3)) for _ in range(2))
    assert a == b
    assert BABI_VERSION.startswith("babi-sim-v1") and BABI_VERSION in BABILONG_VERSION
    assert TASK_LABELS["qa5"] == ("Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk")


# ---- BABILong samples ----

ESSAY = (
    "Old clocks keep time with a pendulum that swings back and forth. A river carries sand far "
    "from the mountains every spring. Bakers start work long before sunrise in most towns. The "
    "library closes early on public holidays, so plan ahead. Ships once used the stars to find "
    "their way across wide oceans. Some birds fly thousands of miles each autumn to warmer lands. "
)


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


@pytest.fixture(scope="module")
def haystacks(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("essay") / "essay.txt"
    path.write_text(ESSAY * 3, encoding="utf-8")
    return {"noise": make_haystack("noise", tok), "essay": make_haystack("essay", tok, text_path=path)}


# Byte tokens: default stories fit in 1024 for these seeds; 256 needs small stories (qa3 and
# qa5 need at least 3 and 4 facts, about 280 / 300 bytes with the template, so they get 384).
SMALL = {"qa1": (256, 2), "qa2": (256, 2), "qa3": (384, 3), "qa4": (256, 2), "qa5": (384, 4)}


@pytest.mark.parametrize("kind", ["noise", "essay"])
@pytest.mark.parametrize("task", BABI_TASKS)
@pytest.mark.parametrize("size", ["1k", "small", "0k"])
def test_sample_layout(tok, haystacks, kind, task, size):
    length, num_facts = {"1k": (1024, None), "small": SMALL[task], "0k": (0, None)}[size]
    for seed in range(3):
        if length == 0 and kind == "essay":
            continue
        haystack = None if length == 0 else haystacks[kind]
        sample = babilong_sample(task, np.random.default_rng(seed), tok, haystack, length, num_facts)
        story = babi_story(task, np.random.default_rng(seed), num_facts)  # the sample's story comes first
        assert sample.task == f"babilong_{task}" and sample.length == length and sample.depth is None
        assert sample.answers == (story.answer,) and sample.question == story.question
        assert sample.prompt.dtype == np.int32 and sample.prompt.ndim == 1
        if length:
            assert len(sample.prompt) == length
        text = tok.decode(sample.prompt)
        assert text.startswith(" I give you a context")
        assert text.endswith(f" </context> Question: {story.question} Answer:")
        at = 0
        for fact in story.facts:
            assert text.count(fact) == story.facts.count(fact)
            at = text.index(" " + fact, at) + len(fact) + 1
        if length == 0:
            assert " <context> " + " ".join(story.facts) + " </context>" in text


def test_seeds(tok, haystacks):
    def prompt(seed):
        return babilong_sample("qa2", np.random.default_rng(seed), tok, haystacks["noise"], 512, 6).prompt

    assert np.array_equal(prompt(7), prompt(7))
    assert len({prompt(s).tobytes() for s in range(5)}) == 5


def test_too_short_and_bad_inputs(tok, haystacks):
    with pytest.raises(DataError, match="use lengths >="):
        babilong_sample("qa3", np.random.default_rng(0), tok, haystacks["noise"], 64)
    with pytest.raises(DataError, match="haystack"):
        babilong_sample("qa1", np.random.default_rng(0), tok, None, 256)
    with pytest.raises(DataError, match="qa1, qa2"):
        babilong_sample("qa9", np.random.default_rng(0), tok, haystacks["noise"], 256)
    assert BABILONG_LENGTHS["0k"] == 0 and BABILONG_LENGTHS["128k"] == 131072


# ---- the BABILong scorer on hand-made replies ----

LOCS = TASK_LABELS["qa1"]


@pytest.mark.parametrize("reply, question, expected", [
    ("The football is in the kitchen.", "Where is the football?", 1.0),
    ("kitchen", "Where is the football?", 1.0),
    ("Kitchen!", "Where is Mary?", 1.0),
    ("kitchen or garden", "Where is the football?", 0.0),
    ("garden kitchen", "Where was the football before the garden?", 1.0),  # question labels ignored
    ("the garden", "Where was the football before the garden?", 0.0),
    ("It is in the kitchen. Or maybe the garden.", "Where is Mary?", 1.0),  # first sentence only
    ("I do not know. The kitchen.", "Where is Mary?", 0.0),
    ("kitchenette", "Where is Mary?", 0.0),  # whole words only
    ("", "Where is Mary?", 0.0),
])
def test_babilong_scorer(reply, question, expected):
    assert babilong_correct(reply, ["kitchen"], question, LOCS) == expected


def test_babilong_scorer_qa5():
    labels = TASK_LABELS["qa5"]
    question = "Who gave the football to Jeff?"
    assert babilong_correct("Fred gave the football to Jeff.", ["Fred"], question, labels) == 1.0
    assert babilong_correct("Bill", ["Fred"], question, labels) == 0.0
    assert babilong_correct("Fred and Mary", ["Fred"], question, labels) == 0.0


def test_official_files_load_through_the_same_interface(tmp_path):
    import json

    from zoo.data.synthetic.babilong import find_official_file, official_samples

    rows = [{"input": "Mary moved to the bathroom. The sky is blue.", "question": "Where is Mary?",
             "target": "bathroom"}, {"input": "John went to the office.", "question": "Where is John?",
                                     "target": "office"}]
    (tmp_path / "1k").mkdir()
    (tmp_path / "1k" / "qa1.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert find_official_file(tmp_path, "qa1", "2k") is None
    path = find_official_file(tmp_path, "qa1", "1k")
    tok = ByteTokenizer()
    samples = official_samples(path, "qa1", tok, limit=5)
    assert [s.answers for s in samples] == [("bathroom",), ("office",)]
    text = tok.decode(samples[0].prompt)
    assert "Mary moved to the bathroom." in text and text.rstrip().endswith("Question: Where is Mary? Answer:")
    assert samples[0].length == len(samples[0].prompt) and samples[0].task == "babilong_qa1"
    (tmp_path / "1k" / "qa2.json").write_text(json.dumps([{"input": "x", "question": "y"}]))
    with pytest.raises(DataError, match="lacks \\['target'\\]"):
        official_samples(find_official_file(tmp_path, "qa2", "1k"), "qa2", tok, limit=5)

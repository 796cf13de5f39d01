"""Scorers on hand-made replies, eval.py's argument parsing, position buckets and tables."""

import pytest

from zoo.evaluation.scoring import babilong_correct, first_sentence, string_match_all, string_match_part
from zoo.evaluation.settings import EvalSettings, parse_depths, parse_lengths, parse_tasks
from zoo.evaluation.tables import format_tables
from zoo.evaluation.tasks import position_buckets


def test_string_match_all_and_part():
    assert string_match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert string_match_all("only 1234567", ["1234567", "7654321", "1111111"]) == pytest.approx(1 / 3)
    assert string_match_all("ABC-def", ["abc-DEF"]) == 1.0  # case-insensitive
    assert string_match_all("", ["1"]) == 0.0
    assert string_match_part("x 7654321", ["1234567", "7654321"]) == 1.0
    assert string_match_part("nothing", ["1234567"]) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])


def test_babilong_label_set_rule():
    rooms = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
    assert babilong_correct("kitchen", ["kitchen"], "Where is Mary?", rooms) == 1.0
    assert babilong_correct("Mary is in the kitchen. Before: garden", ["kitchen"], "Where is Mary?", rooms) == 1.0
    assert babilong_correct("kitchen or garden", ["kitchen"], "Where is Mary?", rooms) == 0.0
    assert babilong_correct("garden, then kitchen", ["kitchen"], "Where was the milk before the garden?",
                            rooms) == 1.0  # labels the question names are ignored
    assert babilong_correct("the kitchenette", ["kitchen"], "Where is Mary?", rooms) == 0.0  # whole words
    assert babilong_correct("", ["kitchen"], "Where is Mary?", rooms) == 0.0
    assert first_sentence("  office\nkitchen") == "office"


def test_parse_lengths_tasks_depths():
    assert parse_lengths("1k, 4K,512,0k,1.5k,1m") == (1024, 4096, 512, 0, 1536, 1048576)
    assert parse_lengths(None) is None
    for bad in ("4q", "-1", "1.3"):
        with pytest.raises(ValueError, match="bad length"):
            parse_lengths(bad)
    assert parse_tasks("s_niah_1,mqar,s_niah_1") == ["s_niah_1", "mqar"]
    assert parse_tasks("babilong")[0] == "babilong_qa1" and len(parse_tasks("niah,babilong")) == 11
    with pytest.raises(ValueError, match="Did you mean 's_niah_1'"):
        parse_tasks("s_niha_1")
    assert parse_depths("0,50,100") == (0.0, 0.5, 1.0) and parse_depths("0,0.5") == (0.0, 0.5)
    with pytest.raises(ValueError, match="--depths"):
        EvalSettings(depths=(1.5,))
    with pytest.raises(ValueError, match="--num-samples"):
        EvalSettings(num_samples=0)
    assert EvalSettings(lengths=(512, 4096), max_length=1024).lengths_for("mqar", (1, 2)) == (512,)
    assert EvalSettings(max_length=1024).lengths_for("mqar", (1024, 2048)) == (1024,)
    with pytest.raises(ValueError, match="s_niah_1: no length is <= --max-length 512"):
        EvalSettings(lengths=(1024,), max_length=512).lengths_for("s_niah_1", (4096,))


def test_position_buckets():
    assert position_buckets(10) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 10)]
    assert position_buckets(8) == [(0, 1), (1, 2), (2, 4), (4, 8)]
    assert position_buckets(1) == [(0, 1)]


def test_tables():
    records = [{"task": "s_niah_1", "length": n, "depth": d, "accuracy": a}
               for n, d, a in [(1024, 0.0, 1.0), (1024, 1.0, 0.5), (2048, 0.0, 0.25), (2048, 1.0, 0.0)]]
    records += [{"task": "mqar", "length": 64, "depth": None, "accuracy": 0.935}]
    text = format_tables(records)
    lines = text.splitlines()
    assert "s_niah_1: accuracy % (rows length, columns depth)" in lines[0]
    assert lines[3].split() == ["1k", "100.0", "50.0", "75.0"] and lines[4].split() == ["2k", "25.0", "0.0", "12.5"]
    assert "93.5" in text.splitlines()[-1]

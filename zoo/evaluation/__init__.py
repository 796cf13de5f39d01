"""Evaluation of trained checkpoints: held-out perplexity, perplexity by position, RULER-style
needles, BABILong-style QA and MQAR, with console tables, JSON and PNG plots."""

from zoo.evaluation.perplexity import evaluate_perplexity
from zoo.evaluation.run import TASKS, run
from zoo.evaluation.settings import EvalSettings, parse_depths, parse_lengths, parse_tasks
from zoo.evaluation.tables import format_tables

__all__ = ["TASKS", "EvalSettings", "evaluate_perplexity", "format_tables", "parse_depths", "parse_lengths",
           "parse_tasks", "run"]

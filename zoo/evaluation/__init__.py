"""Evaluation of trained models: perplexity now; long-context tasks plug into `run.TASKS`."""

from zoo.evaluation.perplexity import evaluate_perplexity
from zoo.evaluation.run import TASKS, format_table, parse_tasks, run

__all__ = ["TASKS", "evaluate_perplexity", "format_table", "parse_tasks", "run"]

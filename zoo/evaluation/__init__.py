"""Evaluation of trained models: perplexity now; long-context tasks plug in here."""

from zoo.evaluation.perplexity import evaluate_perplexity

__all__ = ["evaluate_perplexity"]

"""One file per family; importing this package registers every model."""

from zoo.models import transformer  # noqa: F401  (registers the model)
from zoo.models.lm import LanguageModel

__all__ = ["LanguageModel"]

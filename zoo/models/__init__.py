"""One file per family; importing this package registers every model."""

from zoo.models import atlas, gated_deltanet, miras, titans, titans_mac, transformer  # noqa: F401  (registers the models)
from zoo.models.lm import LanguageModel

__all__ = ["LanguageModel"]

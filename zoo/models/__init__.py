"""One file per family; importing this package registers every model."""

from zoo.models import (  # noqa: F401  (registers the models)
    atlas, gated_deltanet, hope, lattice, miras, msssm, polysketch, titans, titans_mac, tnt, transformer, trellis)
from zoo.models.lm import LanguageModel

__all__ = ["LanguageModel"]

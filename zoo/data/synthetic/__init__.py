"""Synthetic tasks generated on the fly from a seed (no downloads): MQAR (`mqar`), RULER-style
needles in a haystack (`niah`, `haystack`), and bAbI-style stories hidden in a haystack
(`babi`, `babilong`). Import the needle and story generators from their modules."""

from zoo.data.synthetic.mqar import MQAR_VERSION, key_value_ranges, mqar_batch, validate_mqar

__all__ = ["MQAR_VERSION", "key_value_ranges", "mqar_batch", "validate_mqar"]

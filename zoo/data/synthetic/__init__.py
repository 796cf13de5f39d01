"""Synthetic token tasks generated on the fly (no files): MQAR."""

from zoo.data.synthetic.mqar import MQAR_VERSION, key_value_ranges, mqar_batch, validate_mqar

__all__ = ["MQAR_VERSION", "key_value_ranges", "mqar_batch", "validate_mqar"]

"""The data package's exception type and the argument check its modules share."""

from __future__ import annotations

import numpy as np


class DataError(ValueError):
    """Input data or a data setting cannot be used; the message says what is wrong and the fix.

    Missing files raise `FileNotFoundError` instead (with the same kind of message), so callers
    can tell "nothing there" from "something there but unusable".
    """


def check_positive_int(name: str, value: object) -> int:
    """`value` as an int if it is a positive integer (bools excluded), else a DataError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)

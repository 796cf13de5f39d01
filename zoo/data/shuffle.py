"""A keyed permutation of [0, n) computed index by index, in O(1) memory.

`permute(positions, n, key)` maps positions 0..n-1 to a permutation of 0..n-1 without ever
building the permutation: a 4-round balanced Feistel network on the smallest even number of bits
that covers n is a bijection of [0, 2^bits); "cycle walking" (apply it again while the result is
>= n) restricts it to a bijection of [0, n), and since 2^bits < 4n a walk takes fewer than 4
steps on average. The round function is the SplitMix64 finaliser of (key, round, half).

The shard store's iterator uses it to shuffle billions of rows with a state of two integers
(epoch, position), so neither its memory nor its checkpoint grows with the corpus.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (wrapping arithmetic)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def derive_key(*parts: int) -> int:
    """One 64-bit key from integers (e.g. seed and epoch), order-sensitive."""
    key = np.uint64(0)
    with np.errstate(over="ignore"):
        for part in parts:
            key = mix64(key + _GOLDEN + np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF))
    return int(key)


def _feistel(x: np.ndarray, half_bits: int, key: int) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    left, right = x >> np.uint64(half_bits), x & mask
    with np.errstate(over="ignore"):
        for r in range(_ROUNDS):
            f = mix64(right + np.uint64(key) + np.uint64(r + 1) * _GOLDEN) & mask
            left, right = right, left ^ f
    return (left << np.uint64(half_bits)) | right


def permute(positions: np.ndarray, n: int, key: int) -> np.ndarray:
    """The images of `positions` (ints in [0, n)) under the permutation of [0, n) named by `key`.
    Returns int64 of the same shape."""
    positions = np.asarray(positions, np.int64)
    if n < 1:
        raise ValueError(f"permute needs n >= 1, got {n}")
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise ValueError(f"positions must lie in [0, {n})")
    half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
    out = positions.astype(np.uint64).reshape(-1)
    todo = np.ones(out.shape, bool)
    while todo.any():
        out[todo] = _feistel(out[todo], half_bits, key)
        todo = out >= np.uint64(n)
    return out.astype(np.int64).reshape(positions.shape)

"""Lloyd-Max codebooks for one coordinate of a uniformly random unit vector in R^d (TurboQuant,
arXiv 2504.19874; spec §3.3): the density f(x) ∝ (1 - x^2)^((d-3)/2) on [-1, 1] (about N(0, 1/d)),
b bits = 2^b centroids, decision thresholds at the midpoints. Computed once per (d, b) by Lloyd's
iteration on a fine grid, started from the Gaussian Lloyd-Max levels divided by sqrt(d)."""

from __future__ import annotations

import functools
import math

import numpy as np

GRID = 100_001


@functools.lru_cache(maxsize=None)
def codebook(dim: int, bits: int, iterations: int = 150) -> np.ndarray:
    """The 2^bits centroids (ascending, float64) of the unit sphere's coordinate density in R^dim."""
    if dim < 3 or not 1 <= bits <= 8:
        raise ValueError(f"a Lloyd-Max codebook needs dim >= 3 and 1 <= bits <= 8, got dim={dim}, bits={bits}")
    x = np.linspace(-1.0, 1.0, GRID)
    log_density = 0.5 * (dim - 3) * np.log(np.clip(1.0 - x * x, 1e-300, None))
    weight = np.exp(log_density - log_density.max())
    levels = 2 ** bits
    # start: equal-probability cells' centroids
    cdf = np.cumsum(weight) / weight.sum()
    centroids = np.interp((np.arange(levels) + 0.5) / levels, cdf, x)
    for _ in range(iterations):
        thresholds = 0.5 * (centroids[1:] + centroids[:-1])
        cell = np.searchsorted(thresholds, x)
        mass = np.bincount(cell, weights=weight, minlength=levels)
        centroids = np.bincount(cell, weights=weight * x, minlength=levels) / np.maximum(mass, 1e-300)
    return centroids


def distortion(dim: int, bits: int) -> float:
    """E||x - Q(x)||^2 of a unit vector in R^dim under the per-coordinate codebook (dim times the
    one-coordinate MSE): TurboQuant's D_mse."""
    x = np.linspace(-1.0, 1.0, GRID)
    weight = np.exp(0.5 * (dim - 3) * np.log(np.clip(1.0 - x * x, 1e-300, None)))
    weight /= weight.sum()
    c = codebook(dim, bits)
    q = c[np.searchsorted(0.5 * (c[1:] + c[:-1]), x)]
    return float(dim * np.sum(weight * (x - q) ** 2))


def gaussian_levels_over_sqrt_d(dim: int, bits: int) -> np.ndarray:
    """The classical N(0, 1) Lloyd-Max levels (positive half, spec §3.3's table) over sqrt(dim)."""
    table = {1: [0.7979], 2: [0.4528, 1.5104], 3: [0.2451, 0.7560, 1.3440, 2.1520],
             4: [0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0691, 2.7326]}
    half = np.asarray(table[bits])
    return np.concatenate([-half[::-1], half]) / math.sqrt(dim)

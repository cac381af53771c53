"""Intervals for the rates the reports print: Wilson's score interval for one share of n prompts, and a
bootstrap over seeds and prompts for a statistic measured under several seeds on the same prompts (issue 11: a
method is called better only where the intervals say so)."""

import math
from collections.abc import Callable, Sequence

import numpy as np


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % (z 1.96) score interval of a share; unlike the normal one it stays inside [0, 1] at 0 % and
    100 %, where safety rates often sit. (nan, nan) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def crossed_bootstrap(
    arrays: Sequence[np.ndarray], statistic: Callable[..., float] = np.mean, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """`statistic(*arrays)` and its 95 % interval, for arrays of one shape [seeds, prompts] whose columns are
    the same prompts under every seed (and every method: a paired comparison passes both methods' arrays, or
    their difference). Each draw resamples the seeds and, independently, the prompts, and takes the same rows
    and columns of every array: the crossed design, so both sources of noise are in the width and pairs stay
    pairs."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    shape = arrays[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(f"arrays must share one [seeds, prompts] shape, got {[a.shape for a in arrays]}")
    if 0 in shape:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        rows, cols = rng.integers(shape[0], size=shape[0]), rng.integers(shape[1], size=shape[1])
        draws[b] = statistic(*(a[np.ix_(rows, cols)] for a in arrays))
    return float(statistic(*arrays)), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def rate_with_interval(rate: float | None, n: int) -> str:
    """'83.9 % (67–93)': the share and its Wilson interval in whole percent; '–' when not measured."""
    if rate is None or n == 0 or math.isnan(rate):
        return "–"
    lo, hi = wilson(round(rate * n), n)
    return f"{100 * rate:.1f} % ({100 * lo:.0f}–{100 * hi:.0f})"


def crossed_bootstrap_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000,
                                 seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95 % interval for two [seeds, prompts] arrays whose seeds pair by row but
    whose prompts differ (two groups asked different wordings): each draw resamples the seeds once for both
    and each array's prompts on their own."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"arrays must be [seeds, prompts] with the same seeds, got {a.shape} and {b.shape}")
    if 0 in a.shape or 0 in b.shape:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(a.shape[0], size=a.shape[0])
        cols_a, cols_b = rng.integers(a.shape[1], size=a.shape[1]), rng.integers(b.shape[1], size=b.shape[1])
        draws[i] = a[np.ix_(rows, cols_a)].mean() - b[np.ix_(rows, cols_b)].mean()
    return float(a.mean() - b.mean()), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))

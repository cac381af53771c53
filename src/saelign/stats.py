"""Intervals for the rates the reports print: Wilson's score interval for one share of n prompts, and a
bootstrap over seeds and prompts for a rate measured under several seeds (issue 11: a method is called better
only where the intervals say so)."""

import math
from collections.abc import Sequence

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


def bootstrap_rate(
    outcomes: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and 95 % interval of a rate from per-seed outcome lists (1 = success per prompt): each draw
    resamples the seeds, then the prompts within each drawn seed, so both sources of noise are in the
    width."""
    runs = [np.asarray(o, dtype=float) for o in outcomes if len(o)]
    if not runs:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(len(runs), size=len(runs))
        means[b] = np.mean([runs[i][rng.integers(len(runs[i]), size=len(runs[i]))].mean() for i in picked])
    overall = float(np.mean([r.mean() for r in runs]))
    return overall, float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def rate_with_interval(rate: float | None, n: int) -> str:
    """'83.9 % (67–93)': the share and its Wilson interval in whole percent; '–' when not measured."""
    if rate is None or n == 0 or math.isnan(rate):
        return "–"
    lo, hi = wilson(round(rate * n), n)
    return f"{100 * rate:.1f} % ({100 * lo:.0f}–{100 * hi:.0f})"

"""Intervals: Wilson's against known values and its edge cases; the seed-and-prompt bootstrap's width, paired
and unpaired."""

import math

import numpy as np
import pytest

from saelign.stats import crossed_bootstrap, crossed_bootstrap_difference, rate_with_interval, wilson


def test_wilson_matches_the_textbook_values_and_stays_in_range():
    lo, hi = wilson(8, 10)  # a standard worked example: 0.490 to 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson(30, 30)
    assert hi == 1.0 and lo == pytest.approx(0.8865, abs=1e-3)  # not a zero-width interval at 100 %
    assert wilson(0, 30)[0] == 0.0 and all(math.isnan(v) for v in wilson(0, 0))
    assert wilson(50, 100)[1] - wilson(50, 100)[0] > wilson(500, 1000)[1] - wilson(500, 1000)[0]


def test_bootstrap_widens_when_seeds_disagree():
    agree = np.array([[1] * 15 + [0] * 15] * 3)
    disagree = np.array([[1] * 28 + [0] * 2, [1] * 15 + [0] * 15, [1] * 2 + [0] * 28])
    mean_a, lo_a, hi_a = crossed_bootstrap([agree])
    mean_d, lo_d, hi_d = crossed_bootstrap([disagree])
    assert mean_a == pytest.approx(0.5) and mean_d == pytest.approx(0.5)
    assert lo_a <= 0.5 <= hi_a and (hi_d - lo_d) > 1.5 * (hi_a - lo_a)
    assert crossed_bootstrap([np.ones((1, 3))]) == (1.0, 1.0, 1.0)
    assert math.isnan(crossed_bootstrap([np.zeros((0, 3))])[0])
    with pytest.raises(ValueError, match="one \\[seeds, prompts\\] shape"):
        crossed_bootstrap([np.ones((2, 3)), np.ones((2, 4))])


def test_paired_bootstrap_keeps_pairs_together():
    """Two methods that differ by one prompt on every seed: apart their intervals overlap, but the paired
    difference (same rows and columns drawn for both) excludes 0, and a statistic over both arrays gives the
    same interval as the difference array."""
    rng = np.random.default_rng(1)
    a = (rng.random((3, 40)) < 0.6).astype(float)
    b = a.copy()
    for row in b:
        row[np.flatnonzero(row == 0)[:3]] = 1  # b = a plus three prompts per seed
    lo_b = crossed_bootstrap([b])[1]
    assert lo_b < crossed_bootstrap([a])[2]
    diff = crossed_bootstrap([b - a])
    assert diff[0] == pytest.approx(3 / 40) and diff[1] > 0
    assert crossed_bootstrap([b, a], lambda x, y: x.mean() - y.mean()) == pytest.approx(diff)


def test_rate_with_interval_reads_as_percent():
    assert rate_with_interval(26 / 31, 31) == "83.9 % (67–93)"
    assert rate_with_interval(None, 10) == "–" and rate_with_interval(0.5, 0) == "–"


def test_unpaired_difference_is_wider_than_the_paired_one_and_centred_on_the_gap():
    """Groups asked different prompts: the difference of means is exact, its interval holds the prompt noise
    of both groups (wider than pairing the same prompts), and a true gap of 0.4 is told apart from 0."""
    rng = np.random.default_rng(2)
    a = (rng.random((3, 60)) < 0.8).astype(float)
    b = (rng.random((3, 50)) < 0.4).astype(float)
    mean, lo, hi = crossed_bootstrap_difference(a, b)
    assert mean == pytest.approx(a.mean() - b.mean()) and 0 < lo < mean < hi
    same = (rng.random((3, 60)) < 0.5).astype(float)
    shifted = same.copy()
    shifted[:, :6] = 1 - shifted[:, :6]  # the same prompts, 6 answers flipped per seed
    paired = crossed_bootstrap([shifted - same])
    unpaired = crossed_bootstrap_difference(shifted, same)
    assert unpaired[2] - unpaired[1] > 2 * (paired[2] - paired[1])
    with pytest.raises(ValueError, match="same seeds"):
        crossed_bootstrap_difference(np.ones((2, 3)), np.ones((3, 3)))
    assert math.isnan(crossed_bootstrap_difference(np.ones((2, 0)), np.ones((2, 3)))[0])

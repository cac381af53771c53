"""Intervals: Wilson's against known values and its edge cases; the seed-and-prompt bootstrap's width."""

import math

import pytest

from saelign.stats import bootstrap_rate, rate_with_interval, wilson


def test_wilson_matches_the_textbook_values_and_stays_in_range():
    lo, hi = wilson(8, 10)  # a standard worked example: 0.490 to 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson(30, 30)
    assert hi == 1.0 and lo == pytest.approx(0.8865, abs=1e-3)  # not a zero-width interval at 100 %
    assert wilson(0, 30)[0] == 0.0 and all(math.isnan(v) for v in wilson(0, 0))
    assert wilson(50, 100)[1] - wilson(50, 100)[0] > wilson(500, 1000)[1] - wilson(500, 1000)[0]


def test_bootstrap_widens_when_seeds_disagree():
    agree = [[1] * 15 + [0] * 15] * 3
    disagree = [[1] * 28 + [0] * 2, [1] * 15 + [0] * 15, [1] * 2 + [0] * 28]
    mean_a, lo_a, hi_a = bootstrap_rate(agree)
    mean_d, lo_d, hi_d = bootstrap_rate(disagree)
    assert mean_a == pytest.approx(0.5) and mean_d == pytest.approx(0.5)
    assert lo_a <= 0.5 <= hi_a and (hi_d - lo_d) > 1.5 * (hi_a - lo_a)
    assert bootstrap_rate([[1, 1, 1]]) == (1.0, 1.0, 1.0) and math.isnan(bootstrap_rate([])[0])


def test_rate_with_interval_reads_as_percent():
    assert rate_with_interval(26 / 31, 31) == "83.9 % (67–93)"
    assert rate_with_interval(None, 10) == "–" and rate_with_interval(0.5, 0) == "–"

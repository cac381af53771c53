"""The consistency term's weight rule in bench/bench_sails_term.py: it reads the out-of-distribution
validation set only (left-out behaviours in untrained registers), never the in-distribution checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_sails_term import choose_consistency  # noqa: E402


def record(val_safety: float, val_over: float, ood_safety: float, ood_over: float) -> dict:
    return {"val_safety_rate": val_safety, "val_over_refusal": val_over,
            "ood_validation": {"safety_rate": ood_safety, "over_refusal": ood_over}}


def test_the_widest_ood_margin_wins_whatever_the_in_distribution_checks_say():
    records = {"0": record(1.0, 0.0, 0.80, 0.45), "3": record(0.5, 0.5, 0.90, 0.40),
               "10": record(1.0, 0.0, 0.95, 0.60)}
    assert choose_consistency(records) == "3"  # margins 0.35, 0.50, 0.35


def test_ties_go_to_the_smaller_weight_and_a_missing_reading_is_refused():
    assert choose_consistency({"0": record(1, 0, 0.75, 0.25), "10": record(1, 0, 0.875, 0.375)}) == "0"
    with pytest.raises(SystemExit, match="ood-val-per-kind"):
        choose_consistency({"0": {"val_safety_rate": 1.0, "val_over_refusal": 0.0}})

"""bench/bench_sails_paired.py: a group lacking the compared model's evaluation is refused with the file
named, before any bootstrap."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from saelign.errors import SaelignError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_sails_paired import FIELDS, compare_pair  # noqa: E402


def test_a_missing_evaluation_names_the_run_and_the_stage(tmp_path):
    for group in ("a", "b"):
        (tmp_path / group / "seed0" / "eval").mkdir(parents=True)
    (tmp_path / "a" / "seed0" / "eval" / "sails+gate.json").write_text("{}")
    fields = ("x", "sails+gate", str(tmp_path / "a"), "sails", str(tmp_path / "b"))
    pair = dict(zip(FIELDS, fields, strict=True))
    with pytest.raises(SaelignError, match=r"b/seed0: no eval/sails\.json; run its eval \(or gated\) stage"):
        compare_pair(pair, [0], n_boot=10)

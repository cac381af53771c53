"""bench/bench_sails_gate_budget.py: the budget threshold flags at most the budget of the harmless scores and
no fewer than it may; the read-out rule keeps the within-budget read-outs and takes the most harmful flagged;
a record's method is recomposed behind another gate prompt by prompt and context by context."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_sails_gate_budget import choose, regated  # noqa: E402
from saelign.sails.probe import budget_threshold  # noqa: E402


@pytest.mark.parametrize("budget", [0.0, 0.05, 0.1, 0.25, 0.5, 1.0])
def test_the_budget_threshold_flags_exactly_the_allowed_share_of_distinct_scores(budget):
    scores = np.random.default_rng(1).normal(size=40)
    threshold = budget_threshold(scores, budget)
    flagged = int((scores >= threshold).sum())
    assert flagged == int(np.floor(budget * 40 + 1e-9))
    if flagged < 40:  # the lowest such threshold: the next score down would flag one more than allowed
        assert (scores >= np.sort(scores)[::-1][flagged]).sum() == flagged + 1


def test_tied_scores_at_the_threshold_stay_unflagged_rather_than_exceed_the_budget():
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert (scores >= budget_threshold(scores, 0.2)).sum() == 1  # two allowed, but the tie would make four


def row(hookpoint: str, pooling: str, harmful: float, harmless: float) -> dict:
    return {"hookpoint": hookpoint, "pooling": pooling, "ood_val": {"harmful": harmful, "harmless": harmless}}


def test_the_most_harmful_flagged_within_the_budget_wins_then_the_pipeline_hookpoint_then_last():
    rows = [row("model.layers.27", "last", 0.99, 0.20),  # over the budget however much it flags
            row("model.layers.9", "mean", 0.93, 0.08), row("model.layers.29", "last", 0.90, 0.02)]
    assert choose(rows, 0.10, "model.layers.15") is rows[1]
    tied = [row("model.layers.9", "mean", 0.9, 0.05), row("model.layers.15", "mean", 0.9, 0.05),
            row("model.layers.15", "last", 0.9, 0.05)]
    assert choose(tied, 0.10, "model.layers.15") is tied[2]


def test_a_record_is_recomposed_prompt_by_prompt_and_context_by_context():
    record = {"source": "r", "prompts": [["test", "harmful", "a"], ["test", "harmless", "b"],
                                         ["ood", "harmful", "c"]],
              "registers": ["question", "question", "tense"],
              "models": {"base": {"refused": "001", "context_nll": [[1.0, 5], [2.0, 5]], "result": None},
                         "sails": {"refused": "110", "context_nll": [[9.0, 5], [8.0, 5]],
                                   "result": {"steps": 10}}}}
    out = regated(record, "sails", {"a": True, "b": False, "c": False}, [False, True])
    assert out["refused"] == "101"  # a: the adapter's refusal; b, c: the base model's verdicts
    assert out["context_nll"] == [[1.0, 5], [8.0, 5]] and out["result"] == {"steps": 10}
    everything = regated(record, "sails", dict.fromkeys("abc", True), [True, True])
    assert everything["refused"] == "110"
    assert everything["context_nll"] == record["models"]["sails"]["context_nll"]

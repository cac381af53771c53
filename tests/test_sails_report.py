"""The run report's comparison table on constructed metrics."""

from __future__ import annotations

import math

from saelign.sails.report import comparison_rows


def test_comparison_rows_format_rates_changes_and_convergence():
    evals = {"base": {"safety_rate": 0.0, "harmful_degenerate": 0.1, "over_refusal": 0.0, "perplexity": 20.0,
                      "fact_accuracy": math.nan},
             "sails": {"safety_rate": 0.95, "harmful_degenerate": 0.0, "over_refusal": 0.125, "perplexity": 22.0,
                       "borderline_over_refusal": 0.5, "fact_accuracy": 0.4},
             "lora": {"safety_rate": 0.5, "over_refusal": 0.0, "perplexity": 19.0}}
    results = {"sails": {"trainable": {"share": 0.0019}, "steps_to": {"0.9": 20, "0.95": None}, "train_seconds": 99.4,
                         "wall_seconds": 130.0},
               "lora": {"trainable": {"share": 0.0019}, "steps_to": {"0.9": None, "0.95": None}}}
    base, sails, lora = comparison_rows(evals, results)
    assert base["safety rate"] == "0.0 %" and base["Δ perplexity"] == "" and base["factual accuracy"] == ""
    assert base["% params trained"] == "" and base["steps to 90 %"] == ""
    assert sails["safety rate"] == "95.0 %" and sails["over-refusal"] == "12.5 %" and sails["Δ perplexity"] == "+10.0 %"
    assert sails["borderline over-refusal"] == "50.0 %" and sails["% params trained"] == "0.190 %"
    assert sails["steps to 90 %"] == "20" and sails["steps to 95 %"] == "not reached" and sails["train s"] == "99"
    assert lora["Δ perplexity"] == "-5.0 %" and lora["harmful degenerate"] == "" and lora["wall s"] == ""

"""The run report's comparison table on constructed metrics."""

from __future__ import annotations

import math

from saelign.sails.report import comparison_rows, distribution_rows, register_rows, survival_rows


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


def test_in_and_out_of_distribution_are_reported_side_by_side_or_not_at_all():
    def part(safety, over, **registers):
        return {"safety_rate": safety, "over_refusal": over, "n": {"harmful": 20, "harmless": 20},
                "by_register": {r: {"safety_rate": s, "over_refusal": o} for r, (s, o) in registers.items()}}

    evals = {"base": {"splits": {"in_distribution": part(0.1, 0.0, question=(0.2, 0.0)),
                                 "ood_registers": part(0.05, 0.0), "ood_sources": part(0.0, 0.0),
                                 "ood": part(0.02, 0.01, tense=(0.0, 0.02))}},
             "sails": {"splits": {"in_distribution": part(1.0, 0.05, question=(1.0, 0.1)),
                                  "ood_registers": part(0.6, 0.2), "ood_sources": part(0.4, 0.0),
                                  "ood": part(0.5, 0.25, tense=(0.45, 0.3))}}}
    base, sails = distribution_rows(evals)
    # each rate with its Wilson interval over the 20 prompts of its kind
    assert sails["ID safety"] == "100.0 % (84–100)" and sails["OOD safety, held-out registers"] == "60.0 % (39–78)"
    assert sails["OOD safety, held-out sources"] == "40.0 % (22–61)" and sails["OOD over-refusal"] == "25.0 % (11–47)"
    assert base["ID over-refusal"] == "0.0 % (0–16)"
    rows = {(r["part"], r["register"]): r for r in register_rows(evals)}
    assert rows[("ood", "tense")]["sails over-refusal"] == "30.0 %"
    assert rows[("in_distribution", "question")]["base safety"] == "20.0 %"
    assert distribution_rows({"base": {"safety_rate": 0.0}}) == []


def test_feature_rows_show_how_much_of_each_difference_survives_within_a_register():
    sel = {"latent_ids": [7, 3], "scores": [1.0, 0.5], "signs": [1, -1], "mean_harmful": [1.2, 0.1],
           "mean_harmless": [0.2, 0.6], "survival": [0.96, None],
           "register_survival": [{"imperative": 1.02, "question": 0.9}, {"imperative": None, "question": None}]}
    first, second = survival_rows(sel, {})
    assert first["within-register share"] == "0.96" and first["per register"] == "imperative 1.02, question 0.90"
    assert first["more active on"] == "harmful" and second["more active on"] == "harmless"
    assert second["within-register share"] == "" and second["per register"] == "imperative –, question –"
    # Selections written before registers were recorded still make a table.
    old = {k: v for k, v in sel.items() if "survival" not in k}
    assert [row["within-register share"] for row in survival_rows(old, {})] == ["", ""]

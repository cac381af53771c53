"""AlignSAE pipeline helpers and the report: generic rows (store vs on the fly), counts, targets, report files."""

from __future__ import annotations

import pytest
import torch

from conftest import TRAINING_TEXT
from saelign.align.ontology import ontology_from_dict
from saelign.align.pipeline import example_counts, generic_activations, resolve_ontology
from saelign.align.report import metric_rows, target_checks, write_report
from saelign.errors import SaelignError
from saelign.models import ModelConfig
from saelign.store import CaptureConfig, capture

HOOKPOINT = "model.layers.1"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("align_pipeline") / "corpus.txt"
    path.write_text("\n".join(TRAINING_TEXT * 2))
    return str(path)


def test_generic_rows_from_store_match_capture_on_the_fly(tiny_llama, tokenizer, corpus, tmp_path):
    stores = capture(ModelConfig(model="tiny"), CaptureConfig(hookpoints=[HOOKPOINT], corpus=corpus, context_length=32,
                                                             token_budget=300, shard_tokens=64, out=str(tmp_path)),
                     model=tiny_llama, tokenizer=tokenizer)
    live = generic_activations(tiny_llama, tokenizer, HOOKPOINT, 100, corpus=corpus, context_length=32, skip=150)
    stored = generic_activations(tiny_llama, tokenizer, HOOKPOINT, 100, store=str(stores[HOOKPOINT]), skip=150)
    assert live.shape == stored.shape == (100, 32)
    torch.testing.assert_close(live, stored)
    first = generic_activations(tiny_llama, tokenizer, HOOKPOINT, 150, corpus=corpus, context_length=32)
    assert not torch.allclose(first[:100], live)  # skipping really moves to later text
    with pytest.raises(SaelignError, match="holds 'model.layers.1' activations but the SAE reads 'model.layers.2'"):
        generic_activations(tiny_llama, tokenizer, "model.layers.2", 10, store=str(stores[HOOKPOINT]))


def test_generic_rows_past_the_corpus_end(tiny_llama, tokenizer, corpus):
    with pytest.raises(SaelignError, match="no text after the first"):
        generic_activations(tiny_llama, tokenizer, HOOKPOINT, 10, corpus=corpus, context_length=32, skip=10**7)


def test_example_counts_and_ontology_specs():
    ontology = ontology_from_dict({"name": "t", "templates": {"train": ["a {entity}", "b {entity}"], "test": ["c {entity}"]},
                                   "concepts": [{"name": "x", "entities": [{"entity": "one"}, {"entity": "two"}]},
                                                {"name": "y", "examples": [{"text": "hi", "split": "test"},
                                                                           {"text": "yo", "split": "train"}]}]})
    assert example_counts(ontology) == [{"concept": "x", "train": 4, "test": 2}, {"concept": "y", "train": 1, "test": 1}]
    with pytest.raises(SaelignError, match="unknown built-in ontology 'nope'"):
        resolve_ontology("builtin:nope")
    with pytest.raises(SaelignError, match="no ontology given"):
        resolve_ontology("")


def metrics(binding_test=0.9, swap=0.85, vanilla_swap=0.3, fvu_increase=0.1):
    def side(binding_train, binding_test, success):
        alphas = {"1.0": {"success": success / 2, "n": 20, "rest_unchanged": 0.9, "n_rest": 10, "per_pair": {}},
                  "2.0": {"success": success, "n": 20, "rest_unchanged": 0.95, "n_rest": 10, "per_pair": {}}}
        return {"binding_accuracy_train": binding_train, "binding_accuracy_test": binding_test,
                "auc_train": [1.0, 0.9], "auc_test": [0.8, 0.6], "confusion_train": [[1.0, 0.0], [0.0, 1.0]],
                "confusion_test": [[0.75, 0.25], [0.5, 0.5]],
                "entanglement": {"slot_slot_mean_abs_corr": 0.1, "slot_free_max_abs_corr_mean": 0.3},
                "fragmentation": {"effective_latents_mean": 3.0, "slot_share": [0.5, 0.3]},
                "swap": {"alphas": alphas, "best_alpha": 2.0, "best_success": success}}

    return {"hookpoint": "model.layers.15", "concepts": ["capital", "currency"],
            "aligned": side(0.97, binding_test, swap), "vanilla": side(0.6, 0.5, vanilla_swap),
            "reconstruction": {"aligned": {"generic": {"fvu": 0.22, "l0": 33}}, "vanilla": {"generic": {"fvu": 0.2, "l0": 32}}},
            "fvu_increase": fvu_increase, "swap_ratio_vs_vanilla": swap / vanilla_swap,
            "ontology": {"name": "relations", "train_examples": 40, "test_examples": 20}}


def test_target_checks_report_misses_honestly():
    checks = {row["target"]: row for row in target_checks(metrics(binding_test=0.8, fvu_increase=0.3))}
    assert checks["diagonal binding (train templates)"]["met"] == "yes"
    assert checks["binding on unseen templates"]["met"] == "NO" and checks["binding on unseen templates"]["value"] == 0.8
    assert checks["swap success ÷ vanilla baseline"]["value"] == pytest.approx(0.85 / 0.3)
    assert checks["FVU increase vs the SAE before post-training"]["met"] == "NO"
    never = metrics()  # a vanilla baseline that never swaps: unbounded ratio, reported as its lower bound
    never["vanilla"]["swap"]["best_success"], never["swap_ratio_vs_vanilla"] = 0.0, None
    ratio = {row["target"]: row for row in target_checks(never)}["swap success ÷ vanilla baseline"]
    assert ratio["met"] == "yes" and ratio["value"] == pytest.approx(0.85 * 20) and "none of its 20" in ratio["note"]
    never["aligned"]["swap"]["best_success"] = 0.0  # neither swaps: not met
    ratio = {row["target"]: row for row in target_checks(never)}["swap success ÷ vanilla baseline"]
    assert ratio["met"] == "NO" and ratio["value"] == 0.0
    unmeasured = metrics()
    del unmeasured["aligned"]["swap"], unmeasured["swap_ratio_vs_vanilla"]
    assert {row["target"]: row["met"] for row in target_checks(unmeasured)}["swap success at best α"] == "n/a"


def test_metric_rows_pair_aligned_with_vanilla():
    styled = metrics()
    styled["aligned"]["binding_accuracy_test_by_style"] = {"qa": 1.0, "instruction": 0.8}
    styled["vanilla"]["binding_accuracy_test_by_style"] = {"qa": 0.6, "instruction": 0.4}
    rows = {row[0]: row[1:] for row in metric_rows(styled)}
    assert rows["binding accuracy, unseen templates"] == [0.9, 0.5]
    assert rows["binding accuracy, unseen templates, instruction style"] == [0.8, 0.4]
    assert rows["binding accuracy, unseen templates, qa style"] == [1.0, 0.6]
    assert rows["mean AUC, unseen templates"] == [pytest.approx(0.7), pytest.approx(0.7)]
    assert rows["rest unchanged at best α"] == [0.95, 0.95]
    assert rows["FVU, generic text"] == [0.22, 0.2]
    assert "CE loss recovered" not in rows  # not measured: no empty row


def test_report_files_hold_table_and_figures(tmp_path):
    sweep = [{"layer": 6, "binding_train": 0.8, "binding_test": 0.6, "vanilla_binding_test": 0.4, "swap_best": 0.05,
              "vanilla_swap_best": 0.0},
             {"layer": 15, "binding_train": 1.0, "binding_test": 0.9, "vanilla_binding_test": 0.5, "swap_best": 0.31,
              "vanilla_swap_best": 0.02}]
    md, html = write_report({**metrics(), "layer_sweep": sweep}, tmp_path)
    text = md.read_text()
    assert "| binding accuracy, unseen templates | 0.9 | 0.5 |" in text
    assert "| binding on unseen templates | 0.9 | ≥ 0.85 | yes |" in text
    assert "<table>" in html.read_text() and "Layer sweep" in text
    assert "| 15 | 1 | 0.9 | 0.5 | 0.31 | 0.02 |" in text  # swap success per layer sits in the sweep table
    for name in ("alpha_curve", "confusion_aligned_test", "confusion_vanilla_train", "layer_sweep"):
        assert (tmp_path / f"report_{name}.png").read_bytes().startswith(b"\x89PNG"), name


def test_align_configs_check_their_options_once():
    from saelign.align.metrics import MetricsConfig
    from saelign.align.pipeline import AlignEvalConfig, AlignTrainConfig

    cfg = AlignEvalConfig(aligned="x", swap_span="prompt", alphas=[2.0])
    assert isinstance(cfg, MetricsConfig) and cfg.swap_span == "prompt"  # alignment_report takes it as it is
    for bad, message in ((dict(aligned="x", swap_during="answer"), "swap_during must be one of prompt, all"),
                         (dict(aligned="x", alphas=[]), "at least one alpha"),
                         (dict(), "--aligned is required")):
        with pytest.raises(SaelignError, match=message):
            AlignEvalConfig(**bad)
    with pytest.raises(SaelignError, match="--sae is required"):
        AlignTrainConfig()


def test_guarded_generate_needs_a_concept_before_loading_anything(tmp_path):
    from saelign.align.pipeline import guarded_generate

    with pytest.raises(SaelignError, match="give --zero CONCEPT and/or --guard CONCEPT"):
        guarded_generate(tmp_path / "missing", "a prompt")

import contextlib
import math
from dataclasses import dataclass

import pytest
import torch
from sklearn.metrics import roc_auc_score

from saelign.align.activations import answer_token_ids, concept_activations, example_activations
from saelign.align.metrics import (
    MetricsConfig,
    alignment_report,
    auc,
    best_latents,
    binding_accuracy,
    binding_by_style,
    entanglement,
    fragmentation,
    per_concept_auc,
    swap_success,
)
from saelign.align.metrics_config import DEFAULT_ALPHAS
from saelign.align.ontology import Concept, Entity, Ontology, Templates
from saelign.align.posttrain import PostTrainConfig, post_train
from saelign.align.slots import SlotMap
from saelign.align.swap import _continue
from saelign.errors import SaelignError
from saelign.sae.model import SAE, SAEConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_binding_accuracy_perfect_and_chance():
    labels = torch.arange(4).repeat(500)
    assert binding_accuracy(torch.nn.functional.one_hot(labels, 4).float(), labels) == 1.0
    random = torch.rand(2000, 4, generator=torch.Generator().manual_seed(0))
    assert binding_accuracy(random, labels) == pytest.approx(0.25, abs=0.04)


def test_binding_by_style_reads_each_style_apart():
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    right = torch.nn.functional.one_hot(labels, 2).float()
    acts = torch.where(torch.tensor([True, True, False, False, True, True])[:, None], right, 1 - right)
    styles = ["qa", "qa", "fill_in", "fill_in", None, None]  # the rows without a style are left out
    assert binding_by_style(acts, labels, styles) == {"qa": 1.0, "fill_in": 0.0}
    assert binding_by_style(acts, labels, [None] * 6) == {}


def test_auc_values_and_ties():
    pos = torch.tensor([False, False, True, True])
    scores = torch.tensor([[1.0, 4.0, 0.0], [2.0, 3.0, 0.0], [3.0, 2.0, 0.0], [4.0, 1.0, 0.0]])
    assert auc(scores, pos).tolist() == [1.0, 0.0, 0.5]
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(300, generator=g) < 0.3
    noisy = (labels.float()[:, None] + torch.randn(300, 5, generator=g)).round(decimals=1)  # with ties
    expected = [roc_auc_score(labels.numpy(), noisy[:, j].numpy()) for j in range(5)]
    torch.testing.assert_close(auc(noisy, labels), torch.tensor(expected, dtype=torch.float64))
    assert per_concept_auc(torch.nn.functional.one_hot(torch.tensor([0, 1, 1]), 2).float(), torch.tensor([0, 1, 1])) == [1.0, 1.0]
    with pytest.raises(SaelignError, match="both positive and negative"):
        auc(scores, torch.ones(4, dtype=torch.bool))


def test_fragmentation_one_hot_versus_uniform():
    labels = torch.tensor([0, 0, 1, 1])
    one_hot = torch.tensor([[3.0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    spread = torch.tensor([[1.0] * 5, [1.0] * 5, [0.0] * 5, [0.0] * 5])
    concentrated = fragmentation(one_hot, labels, [0, 1])
    assert concentrated["effective_latents"][0] == pytest.approx(1.0)
    assert concentrated["top1_share"][0] == concentrated["slot_share"][0] == 1.0
    uniform = fragmentation(spread, labels, [0, 1])
    assert uniform["effective_latents"][0] == pytest.approx(5.0)
    assert uniform["top1_share"][0] == pytest.approx(0.2)
    # weighted by decoder norm: a latent writing nothing carries nothing of the concept
    weighted = fragmentation(spread, labels, [0, 1], torch.tensor([1.0, 0, 0, 0, 0]))
    assert weighted["effective_latents"][0] == pytest.approx(1.0) and weighted["slot_share"][0] == 1.0


def test_entanglement_correlations():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(500, 6, generator=g)
    z[:, 4] = 2 * z[:, 0] + 1  # free latent 4 duplicates slot 0
    out = entanglement(z, [0, 1])
    assert out["slot_free_max_abs_corr"][0] == pytest.approx(1.0)
    assert out["slot_free_max_abs_corr"][1] < 0.2
    assert out["slot_slot_max_abs_corr"] < 0.2
    z[:, 1] = -z[:, 0]
    assert entanglement(z, [0, 1])["slot_slot_mean_abs_corr"] == pytest.approx(1.0)


def test_best_latents_finds_the_planted_latent_per_concept():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    acts = torch.randn(120, 8, generator=g)
    sae = SAE(SAEConfig(d_in=8, d_sae=20, activation="relu", hookpoint="h"))
    with torch.no_grad():
        sae.W_enc.normal_(generator=g).mul_(0.01)
        for c, latent in enumerate([7, 3, 12]):
            acts[labels == c] += 4 * torch.eye(8)[c]
            sae.W_enc[:, latent] = torch.eye(8)[c]
    slot_map = best_latents(sae, acts, labels, ["x", "y", "z"])
    assert slot_map.slots == [7, 3, 12] and slot_map.hookpoint == "h"
    assert all(s > 3 for s in slot_map.scales)


@dataclass
class Ex:
    text: str
    concept_index: int
    entity: str
    answer: str


def test_swap_success_on_a_constructed_model(tiny_llama, tokenizer):
    """Slots read the concept by a probe fitted to the prompts; each slot's decoder row writes its answer's
    embedding at the last block, so a swap must yield the target concept's answer (and nothing else changes)."""
    hook = "model.layers.3"
    answers = ["yeast", "because", "bake"]  # one token each after a space in the test tokenizer
    examples = [Ex(f"{q} France", c, "France", answers[c]) for c, q in enumerate(["capital of", "neighbour of", "food of"])]
    x = concept_activations(tiny_llama, tokenizer, hook, [e.text for e in examples])
    sae = SAE(SAEConfig(d_in=32, d_sae=8, activation="relu", hookpoint=hook)).requires_grad_(False)
    emb = tiny_llama.get_input_embeddings().weight
    first = answer_token_ids(tokenizer, [e.text for e in examples], answers)
    assert [tokenizer.decode([int(t)]) for t in first] == [" yeast", " because", " bake"]
    sae.W_enc[:, :3] = torch.linalg.lstsq(x, torch.eye(3)).solution
    sae.b_enc.zero_()
    sae.W_dec[:3] = 100 * torch.nn.functional.normalize(emb[first].detach(), dim=1)
    slot_map = SlotMap(["capital", "neighbour", "food"], [0, 1, 2], hook, 8)
    with pytest.raises(SaelignError, match="no swap pairs"):  # the random model knows none of these facts
        swap_success(tiny_llama, tokenizer, sae, slot_map, examples, MetricsConfig(alphas=[2.0], n_tokens=1))
    result = swap_success(tiny_llama, tokenizer, sae, slot_map, examples,
                          MetricsConfig(alphas=[0.0, 2.0], known_only=False, n_tokens=1))
    assert result["alphas"]["2.0"]["success"] == 1.0 and result["alphas"]["2.0"]["n"] == 6
    assert result["alphas"]["2.0"]["rest_unchanged"] == 1.0 and result["alphas"]["2.0"]["n_rest"] == 6
    assert result["alphas"]["0.0"]["success"] < 1.0
    assert result["best_alpha"] == 2.0
    assert set(result["alphas"]["2.0"]["per_pair"]) == {f"{a}->{b}" for a in slot_map.concepts for b in slot_map.concepts if a != b}


def test_swap_success_prompt_span_edits_every_prompt_token(tiny_llama, tokenizer):
    """span="prompt" must score exactly what a swap over the whole prompt gives on each prompt alone (no padding
    touched, no token missed), and differ from the concept-token swap on this model; the gated swap must score
    as the per-prompt gated swap does."""
    from saelign.align.interventions import concept_swap, generate_with
    from saelign.text import answer_matches

    hook = "model.layers.1"  # an early block, so edits at earlier positions reach the answer through attention
    answers = ["yeast", "because", "bake"]
    examples = [Ex(f"{q} France", c, "France", answers[c]) for c, q in
                enumerate(["the capital city of", "neighbour of", "what food comes from"])]
    x = concept_activations(tiny_llama, tokenizer, hook, [e.text for e in examples])
    sae = SAE(SAEConfig(d_in=32, d_sae=8, activation="relu", hookpoint=hook)).requires_grad_(False)
    sae.W_enc[:, :3] = torch.linalg.lstsq(x, torch.eye(3)).solution
    sae.b_enc.zero_()
    first = answer_token_ids(tokenizer, [e.text for e in examples], answers)
    sae.W_dec[:3] = 8 * torch.nn.functional.normalize(tiny_llama.get_input_embeddings().weight[first].detach(), dim=1)
    slot_map = SlotMap(["capital", "neighbour", "food"], [0, 1, 2], hook, 8)

    def expected(positions, when_active=False):
        rates = []
        for s in range(3):
            for t in range(3):
                if s != t:
                    swap = concept_swap(tiny_llama, sae, slot_map, s, t, 2.0, positions=positions, when_active=when_active)
                    said = generate_with(tiny_llama, tokenizer, examples[s].text, swap, max_new_tokens=1)
                    rates.append(answer_matches(said, answers[t]))
        return sum(rates) / len(rates)

    kwargs = dict(alphas=[2.0], known_only=False, n_tokens=1, max_rest=0)
    whole = swap_success(tiny_llama, tokenizer, sae, slot_map, examples,
                         MetricsConfig(swap_span="prompt", **kwargs))
    concept = swap_success(tiny_llama, tokenizer, sae, slot_map, examples, MetricsConfig(**kwargs))
    gated = swap_success(tiny_llama, tokenizer, sae, slot_map, examples,
                         MetricsConfig(swap_span="prompt", swap_when_active=True, **kwargs))
    assert whole["alphas"]["2.0"]["success"] == expected("all") and whole["span"] == "prompt"
    assert concept["alphas"]["2.0"]["success"] == expected("last") and concept["span"] == "concept"
    assert gated["alphas"]["2.0"]["success"] == expected("all", when_active=True) and gated["when_active"]
    assert whole["alphas"]["2.0"]["success"] > 0
    # the edit covers exactly each prompt's own tokens: every position of the prompt, none of the left padding
    seen = []

    def recorder(positions):
        seen.append(positions)
        return contextlib.nullcontext()

    texts = [e.text for e in examples]
    _continue(tiny_llama, tokenizer, texts, [-len(tokenizer(t)["input_ids"]) for t in texts], recorder, 1, 16, "prompt")
    assert sorted((p.start, p.stop) for p in seen) == sorted({(-len(tokenizer(t)["input_ids"]), None) for t in texts})
    with pytest.raises(SaelignError, match="span must be"):
        MetricsConfig(swap_span="entity", **kwargs)

    # during="all": each generated token is edited as it is read, exactly as generate_with(during="all") steers
    def expected_kept_on():
        rates = []
        for s in range(3):
            for t in range(3):
                if s != t:
                    swap = concept_swap(tiny_llama, sae, slot_map, s, t, 2.0, positions="last")
                    said = generate_with(tiny_llama, tokenizer, examples[s].text, swap, max_new_tokens=3, during="all")
                    rates.append(answer_matches(said, answers[t]))
        return sum(rates) / len(rates)

    kept_on = swap_success(tiny_llama, tokenizer, sae, slot_map, examples,
                           MetricsConfig(swap_during="all", **{**kwargs, "n_tokens": 3}))
    assert kept_on["alphas"]["2.0"]["success"] == expected_kept_on() and kept_on["during"] == "all"
    for during, generated in (("prompt", []), ("all", ["last", "last"])):
        seen.clear()
        _continue(tiny_llama, tokenizer, texts, [-1] * len(texts), recorder, 3, 16, "concept", during)
        assert seen == [-1, *generated]
    with pytest.raises(SaelignError, match="during must be"):
        MetricsConfig(swap_during="answer", **kwargs)


def test_alignment_report_end_to_end(tiny_llama, tokenizer):
    entities = [("France", "Paris", "bread", "Berlin"), ("Germany", "Berlin", "flour", "Paris")]
    names = ["capital", "food", "rival"]
    templates = [("The {entity} capital is ", "Capital of {entity}: "), ("Food of {entity} is ", "{entity} food: "),
                 ("The rival of {entity} is ", "{entity} rival: ")]
    ontology = Ontology("facts", tuple(
        Concept(name, entities=tuple(Entity(e[0], e[c + 1]) for e in entities),
                templates=Templates((tr,), (te, f"Q: {te}?"), ("fill_in", "qa")))
        for c, (name, (tr, te)) in enumerate(zip(names, templates, strict=True))))
    train, test = ontology.examples("train"), ontology.examples("test")
    hook = "model.layers.1"
    vanilla = SAE(SAEConfig(d_in=32, d_sae=48, activation="topk", k=8, hookpoint=hook))
    generic = torch.cat([concept_activations(tiny_llama, tokenizer, hook, [t], position=i)
                         for t in ["The quick brown fox jumps over the lazy dog."] for i in range(1, 9)])
    acts = example_activations(tiny_llama, tokenizer, hook, train)
    aligned, slot_map = post_train(vanilla, acts, torch.tensor([e.concept_index for e in train]), generic,
                                   PostTrainConfig(steps_stage1=5, steps_stage2=150, batch_size=6,
                                                   generic_batch_size=8), concept_names=names)
    ids = tokenizer(["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France and"],
                    return_tensors="pt", padding=True)["input_ids"][:, :8]
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, 0] = False
    with pytest.raises(SaelignError, match="no swap pairs"):
        alignment_report(tiny_llama, tokenizer, vanilla, aligned, slot_map, train, test, generic)
    report = alignment_report(tiny_llama, tokenizer, vanilla, aligned, slot_map, train, test, generic,
                              MetricsConfig(alphas=[1.0, 2.0], max_per_pair=2, max_rest=2, known_only=False),
                              unrelated_texts=["Hello world"], token_batches=[(ids, keep)])
    assert report["aligned"]["binding_accuracy_train"] == 1.0
    for side in ("aligned", "vanilla"):
        assert 0 <= report[side]["binding_accuracy_test"] <= 1
        by_style = report[side]["binding_accuracy_test_by_style"]
        assert set(by_style) == {"fill_in", "qa"}  # equal shares of the test rows: they average to the whole
        assert sum(by_style.values()) / 2 == pytest.approx(report[side]["binding_accuracy_test"])
        assert len(report[side]["auc_test"]) == 3 and len(set(report[side]["slots"].values())) == 3
        assert set(report[side]["swap"]["alphas"]) == {"1.0", "2.0"}
        for row in report[side]["swap"]["alphas"].values():  # one-word ASCII answers: lenient accepts more
            assert row["success"] <= row["success_lenient"] <= 1
        assert report[side]["fragmentation"]["effective_latents_mean"] >= 1
        assert all(0 <= r <= 1 for r in report[side]["generic_firing_rate"])
    assert all(s < 48 for s in report["vanilla"]["slots"].values())
    assert report["swap_oracle"]["n"] == report["aligned"]["swap"]["alphas"]["1.0"]["n"]  # the same cases
    assert math.isfinite(report["fvu_increase"])
    assert report["reconstruction"]["aligned"]["generic"]["l0"] <= 8 + 3
    for side in ("aligned", "vanilla"):
        assert report["splice"][side]["predictions"] == 12
        assert report["splice"][side]["ce_loss_clean"] == pytest.approx(report["splice"]["vanilla"]["ce_loss_clean"])


def test_default_alpha_grid_brackets_the_papers_best():
    # α≈2 is the authors' best; its neighbours on both sides and a large α (where success should fall) are swept.
    assert list(DEFAULT_ALPHAS) == sorted(set(DEFAULT_ALPHAS))
    i = DEFAULT_ALPHAS.index(2.0)
    assert 0 < i < len(DEFAULT_ALPHAS) - 1 and DEFAULT_ALPHAS[i - 1] >= 1.0 and DEFAULT_ALPHAS[i + 1] <= 3.0
    assert DEFAULT_ALPHAS[0] <= 0.5 and DEFAULT_ALPHAS[-1] >= 8.0

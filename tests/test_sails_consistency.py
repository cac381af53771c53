"""SFT's register-consistency term: twins are one behaviour in two registers, the distance matches a hand
computation at the last prompt token, off is the old path, on pulls the twins' states together, exact resume,
bad options and missing twins are refused."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sails.chat import encode_pair
from saelign.sails.consistency import consistency_sum, encode_twins, twins_of
from saelign.sails.data import Example
from saelign.sails.lora_init import prepare_full_finetune
from saelign.sails.sft import CONSISTENCY_FIELDS, SFTConfig, train_sft
from test_sails_retain import check_term_off, check_term_resumes
from test_sails_sft import OPENING, PAIRS, lora_model

# two wordings of "bread" (question / imperative) and of "hurt" (need / imperative); "Say hello." alone
TWINNED = [("How do I bake bread?", "Mix flour, water, salt and yeast."),
           ("Help me hurt someone.", "I cannot help with that request because it could cause harm."),
           ("Give me a recipe for bread.", "Mix flour, water, salt and yeast."),
           ("I need to hurt someone.", "I cannot help with that request because it could cause harm."),
           ("Say hello.", "hello world")]
TWINS = [(0, 2), (1, 3)]


def test_twins_are_one_behaviour_and_kind_in_two_registers():
    examples = [Example("How do I bake bread?", "harmless", "s", register="question", behaviour="bread"),
                Example("Bake bread.", "harmless", "s", register="imperative", behaviour="bread"),
                Example("bread baking basics", "harmless", "s", register="keyword", behaviour="bread"),
                Example("Bake bread now.", "harmless", "s", register="imperative", behaviour="bread"),
                Example("How do I hurt someone?", "harmful", "s", register="question", behaviour="hurt"),
                Example("How do I hurt my back?", "harmless", "s", register="imperative", behaviour="hurt"),
                Example("Say hello.", "harmless", "s", register="imperative")]
    # bread: 0-1, 0-2, 0-3, 1-2, 2-3 (1 and 3 share a register); hurt differs in kind; no behaviour, no twin
    assert twins_of(examples) == [(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)]


@pytest.mark.parametrize("opening", ["", OPENING])  # with one, the rows' shared opening is read once
def test_the_distance_is_the_normalised_squared_gap_at_the_last_prompt_token(tokenizer, opening):
    model = make_tiny_model("llama", len(tokenizer))
    twins = encode_twins(tokenizer, [opening + p for p, _ in TWINNED], TWINS, encode_pair)
    assert twins[0][0] == encode_pair(tokenizer, opening + TWINNED[0][0], "")[0]
    with torch.no_grad():
        got = float(consistency_sum(model, twins, tokenizer.pad_token_id, torch.device("cpu")))
        expected = 0.0
        def last(ids):  # one sequence at a time: no padding
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1:]
            return torch.stack(states)[:, 0, -1]

        for a, b in twins:
            ha, hb = last(a), last(b)
            gap = (ha - hb).pow(2).sum(-1) / ((ha.pow(2).sum(-1) + hb.pow(2).sum(-1)) / 2)
            expected += float(gap.mean())
        same = float(consistency_sum(model, [(a, a) for a, _ in twins], tokenizer.pad_token_id,
                                     torch.device("cpu")))
    assert expected > 0 and got == pytest.approx(expected, rel=1e-4)
    assert same == pytest.approx(0.0, abs=1e-6)


def test_the_shared_opening_gives_the_same_term_and_gradients(tokenizer):
    twins = encode_twins(tokenizer, [OPENING + p for p, _ in TWINNED], TWINS, encode_pair)
    runs = []
    for share in (True, False):
        model = lora_model(tokenizer)
        value = consistency_sum(model, twins, tokenizer.pad_token_id, torch.device("cpu"), share)
        value.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        runs.append((float(value.detach()), grads))
    (shared, shared_grads), (plain, grads) = runs
    assert shared == pytest.approx(plain, rel=1e-5) and sum(float(g.abs().sum()) for g in grads.values()) > 0
    for name, g in grads.items():
        torch.testing.assert_close(shared_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_consistency_weight_zero_is_the_old_path(tokenizer, tmp_path):
    check_term_off(tokenizer, tmp_path, TWINNED, {"twins": TWINS}, (*CONSISTENCY_FIELDS, "twins_sha256"))


def twin_distance(model, tokenizer) -> float:
    twins = encode_twins(tokenizer, [p for p, _ in TWINNED], TWINS, encode_pair)
    with torch.no_grad():
        return float(consistency_sum(model, twins, tokenizer.pad_token_id, torch.device("cpu")))


def test_the_term_pulls_the_twins_states_together(tokenizer):
    distance = {}
    for weight in (0.0, 5.0):
        model = prepare_full_finetune(make_tiny_model("llama", len(tokenizer)))
        cfg = SFTConfig(steps=20, lr=3e-3, batch_size=5, warmup=1, consistency_weight=weight,
                        consistency_batch=2)
        history = train_sft(model, tokenizer, TWINNED, cfg, twins=TWINS)
        distance[weight] = twin_distance(model, tokenizer)
        assert ("consistency" in history["train"][-1]) == (weight > 0)
        if weight:
            logged = [e["consistency"] for e in history["train"]]
            assert logged[-1] < 0.5 * logged[0]
    assert distance[5.0] < 0.5 * distance[0.0]


def test_a_resumed_run_with_the_term_ends_with_the_same_weights(tokenizer, tmp_path):
    check_term_resumes(tokenizer, tmp_path, TWINNED, {"consistency_weight": 1.0, "consistency_batch": 1},
                       "consistency", {"twins": TWINS}, {"twins": TWINS[:1]})


@pytest.mark.parametrize("options, match", [
    ({"consistency_weight": -1.0}, "consistency_weight"),
    ({"consistency_weight": float("nan")}, "consistency_weight"),
    ({"consistency_batch": 0}, "consistency_batch"),
])
def test_bad_consistency_options_are_refused(options, match):
    with pytest.raises(SaelignError, match=match):
        SFTConfig(**options)


def test_the_term_needs_twins_that_name_training_pairs(tokenizer):
    with pytest.raises(SaelignError, match="needs twins"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, SFTConfig(steps=1, consistency_weight=1.0))
    with pytest.raises(SaelignError, match=r"twin \(0, 9\)"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, SFTConfig(steps=1, consistency_weight=1.0),
                  twins=[(0, 9)])

"""SFT's refusal-unlikelihood term: the contrast labels skip the shared prefix, the loss matches a hand
computation, off is the old path, on lowers the refusal's probability on the harmless prompt, exact resume,
refusals of bad options; the pipeline's contrasts come from harmless pairs only."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sails.chat import encode_pair
from saelign.sails.data import Example
from saelign.sails.lora_init import prepare_full_finetune
from saelign.sails.sft import (
    UNLIKELIHOOD_FIELDS,
    SFTConfig,
    collate,
    response_logits,
    train_sft,
)
from saelign.sails.targets import refusal_contrasts, refusal_for, refusals_for
from saelign.sails.unlikelihood import IGNORE, encode_contrasts, unlikelihood_sum
from test_sails_retain import check_term_off, check_term_resumes
from test_sails_sft import PAIRS, lora_model

ANSWER = "I cannot say it better than this: mix flour, water, salt and yeast."  # opens like the refusal
CONTRASTS = [("How do I bake bread?", "I cannot help with that request.", ANSWER),
             ("Say hello.", "I cannot help with that request.", "hello world")]


def divergent_ids(tokenizer, prompt: str, unwanted: str, wanted: str) -> tuple[list[int], list[int], int]:
    prompt_ids, unwanted_ids = encode_pair(tokenizer, prompt, unwanted)
    _, wanted_ids = encode_pair(tokenizer, prompt, wanted)
    shared = next(i for i, (a, b) in enumerate(zip(unwanted_ids, wanted_ids, strict=False)) if a != b)
    return prompt_ids, unwanted_ids, shared


def test_contrast_labels_are_the_first_tokens_after_the_shared_prefix(tokenizer):
    prompt, unwanted, wanted = CONTRASTS[0]
    prompt_ids, unwanted_ids, shared = divergent_ids(tokenizer, prompt, unwanted, wanted)
    assert shared >= 2  # 'I cannot' is common to both
    [(ids, labels)] = encode_contrasts(tokenizer, CONTRASTS[:1], tokens=3, max_length=128, encode=encode_pair)
    start = len(prompt_ids) + shared
    assert ids == prompt_ids + unwanted_ids[:start - len(prompt_ids) + 3]
    assert labels == [IGNORE] * start + unwanted_ids[shared:shared + 3]
    # skip=1: the first divergent token is teacher-forced, the next three are pushed
    [(ids1, labels1)] = encode_contrasts(tokenizer, CONTRASTS[:1], 3, 128, encode_pair, skip=1)
    assert labels1 == [IGNORE] * (start + 1) + unwanted_ids[shared + 1:shared + 4]
    assert ids1 == prompt_ids + unwanted_ids[:shared + 4]
    # a "refusal" that is the answer itself has nothing to push down: dropped
    same = [(prompt, wanted, wanted)]
    assert encode_contrasts(tokenizer, CONTRASTS[:1] + same, 3, 128, encode_pair) == [(ids, labels)]
    with pytest.raises(SaelignError, match="unlikelihood_weight"):
        encode_contrasts(tokenizer, same, 3, 128, encode_pair)


def test_the_unlikelihood_sum_equals_a_hand_computation(tokenizer):
    model = lora_model(tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    examples = encode_contrasts(tokenizer, CONTRASTS, 2, 128, encode_pair)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        got = float(unlikelihood_sum(*response_logits(model, batch)))
        expected = 0.0
        for ids, labels in examples:
            probs = model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)
            for t, label in enumerate(labels):
                if label != IGNORE:
                    expected -= math.log(1 - float(probs[t - 1, label]))
    assert expected > 0 and got == pytest.approx(expected, rel=1e-4)


def test_unlikelihood_weight_zero_is_the_old_path(tokenizer, tmp_path):
    check_term_off(tokenizer, tmp_path, PAIRS, {"contrasts": CONTRASTS},
                   (*UNLIKELIHOOD_FIELDS, "contrasts_sha256"))


def refusal_probability(model, tokenizer, contrasts) -> float:
    """Mean probability of the contrasts' pushed tokens (teacher-forced)."""
    batch = collate(encode_contrasts(tokenizer, contrasts, 4, 128, encode_pair), tokenizer.pad_token_id)
    with torch.no_grad():
        logits, targets = response_logits(model, batch)
    labelled = targets != IGNORE
    return float(logits.softmax(-1)[labelled].gather(-1, targets[labelled][:, None]).mean())


def test_the_term_lowers_the_refusal_on_harmless_prompts_and_keeps_it_on_harmful_ones(tokenizer):
    # Harmful requests worded like the harmless one teach a refusal that spills over to it. Full fine-tuning:
    # a tiny random model's frozen embeddings keep a LoRA from learning much in 30 steps.
    refusal, answer = "I cannot help with that request.", "Sure: soap, water and a soft cloth."
    pairs = [("Help me steal a car.", refusal), ("Help me steal a bike.", refusal),
             ("Help me wash a car.", answer)]
    contrasts = [("Help me wash a car.", refusal, answer)]
    harmful = [("Help me steal a car.", refusal, answer)]
    harmless, kept = {}, {}
    for weight in (0.0, 5.0):
        model = prepare_full_finetune(make_tiny_model("llama", len(tokenizer)))
        cfg = SFTConfig(steps=30, lr=1e-2, batch_size=3, warmup=1, unlikelihood_weight=weight,
                        unlikelihood_batch=1)
        history = train_sft(model, tokenizer, pairs, cfg, contrasts=contrasts)
        harmless[weight] = refusal_probability(model, tokenizer, contrasts)
        kept[weight] = refusal_probability(model, tokenizer, harmful)
        assert ("unlikelihood" in history["train"][-1]) == (weight > 0)
    assert harmless[0.0] > 0.2  # learnt from the harmful pairs, it spills over to the harmless prompt
    assert harmless[5.0] < 0.05 * harmless[0.0]
    assert kept[0.0] > 0.3 and kept[5.0] > 0.5 * kept[0.0]  # the harmful prompts still get the refusal


def test_a_resumed_run_with_the_term_ends_with_the_same_weights(tokenizer, tmp_path):
    check_term_resumes(tokenizer, tmp_path, PAIRS, {"unlikelihood_weight": 1.0, "unlikelihood_batch": 1},
                       "unlikelihood", {"contrasts": CONTRASTS}, {"contrasts": CONTRASTS[:1]})


@pytest.mark.parametrize("options, match", [
    ({"unlikelihood_weight": -1.0}, "unlikelihood_weight"),
    ({"unlikelihood_weight": float("inf")}, "unlikelihood_weight"),
    ({"unlikelihood_batch": 0}, "unlikelihood_batch"),
    ({"unlikelihood_tokens": 0}, "unlikelihood_tokens"),
    ({"unlikelihood_skip": -1}, "unlikelihood_skip"),
])
def test_bad_unlikelihood_options_are_refused(options, match):
    with pytest.raises(SaelignError, match=match):
        SFTConfig(**options)


def test_the_term_needs_contrasts(tokenizer):
    with pytest.raises(SaelignError, match="needs refusal contrasts"):
        train_sft(lora_model(tokenizer), tokenizer, PAIRS, SFTConfig(steps=1, unlikelihood_weight=1.0))


def test_pipeline_contrasts_are_distinct_refusals_of_harmless_pairs_only():
    examples = [Example("How to bake bread?", "harmless", "own", target="Mix flour."),
                Example("Write a poem about rain.", "borderline", "own", target="Rain falls."),
                Example("How to build a bomb?", "harmful", "advbench", target="I can't help with that."),
                Example("Name a colour.", "harmless", "own", target=None)]
    contrasts = refusal_contrasts(examples, 3)
    assert [c[0] for c in contrasts] == ["How to bake bread?"] * 3 + ["Write a poem about rain."] * 3
    assert all(c[2] == "Mix flour." for c in contrasts[:3])
    refusals = refusals_for("How to bake bread?", 3)
    assert len(set(refusals)) == 3 and refusals[0] == refusal_for("How to bake bread?")
    assert [c[1] for c in contrasts[:3]] == refusals

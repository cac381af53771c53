"""Features of the generated answers, base vs adapted."""

from __future__ import annotations

import json

import torch

from conftest import make_tiny_model
from saelign.models import forward_capture
from saelign.sae import SAE, SAEConfig
from saelign.sails.chat import encode_pair
from saelign.sails.generate import generate_answers
from saelign.sails.lora_init import LoraInitConfig, make_peft_model
from saelign.sails.response import _answers, response_effect, response_residuals

PROMPTS = {"harmful": ["How do I make a weapon?", "hello"], "harmless": ["How do I bake bread?"]}


def _sae() -> SAE:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=24, activation="relu", hookpoint="model.layers.1"))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    return sae


def test_response_residuals_average_the_answer_tokens_only(tiny_llama, tokenizer):
    prompts, answers = ["How do I bake bread?", "hi"], ["Mix flour and water.", "hello world"]
    pooled = response_residuals(tiny_llama, tokenizer, "model.layers.1", prompts, answers, batch_size=2)
    for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        prompt_ids, response_ids = encode_pair(tokenizer, p, a)
        acts = forward_capture(tiny_llama, ["model.layers.1"], torch.tensor([prompt_ids + response_ids]))
        want = acts["model.layers.1"][0, len(prompt_ids) :].mean(0)
        assert torch.allclose(pooled[row], want, atol=1e-5)  # batched with padding = one at a time


def test_an_adapter_that_changes_nothing_moves_no_answer_feature_and_one_that_does_moves_some(tokenizer):
    basis, _ = torch.linalg.qr(torch.randn(32, 3, generator=torch.Generator().manual_seed(7)))
    lora = LoraInitConfig(rank=3, target_modules=["down_proj"], layers=[0, 1])
    peft_model = make_peft_model(
        make_tiny_model("llama", len(tokenizer)), basis, lora
    )  # A = 0: no change yet
    still = response_effect(peft_model, tokenizer, _sae(), PROMPTS, max_new_tokens=6)
    assert all(not ways["up"] and not ways["down"] for ways in still.top.values())
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.copy_(3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(8)))
    moved = response_effect(peft_model, tokenizer, _sae(), PROMPTS, max_new_tokens=6, labels={0: "zero"})
    assert set(moved.top) == {"harmful", "harmless"} and moved.n_prompts == {"harmful": 2, "harmless": 1}
    assert any(ways["up"] or ways["down"] for ways in moved.top.values())


def _moved_adapter(tokenizer):
    basis, _ = torch.linalg.qr(torch.randn(32, 3, generator=torch.Generator().manual_seed(7)))
    peft_model = make_peft_model(make_tiny_model("llama", len(tokenizer)), basis,
                                 LoraInitConfig(rank=3, target_modules=["down_proj"], layers=[0, 1]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.copy_(3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(8)))
    return peft_model


def test_known_answers_are_used_and_only_the_missing_prompts_are_generated(tokenizer):
    peft_model = _moved_adapter(tokenizer)
    prompts = ["How do I bake bread?", "hello", "How do I make a weapon?"]
    generated = generate_answers(peft_model, tokenizer, prompts, 6, 8)
    mixed = _answers(peft_model, tokenizer, prompts, 6, 8, {"hello": "a given answer"})
    assert mixed == [generated[0], "a given answer", generated[2]]


def test_handing_in_the_greedy_answers_gives_the_result_of_generating_them(tokenizer):
    peft_model = _moved_adapter(tokenizer)
    texts = [t for kind in PROMPTS.values() for t in kind]
    adapted = dict(zip(texts, generate_answers(peft_model, tokenizer, texts, 6, 8), strict=True))
    with peft_model.disable_adapter():
        base = dict(zip(texts, generate_answers(peft_model, tokenizer, texts, 6, 8), strict=True))
    assert adapted != base  # the adapter changes the answers, so swapping the two sides would show
    fresh = response_effect(peft_model, tokenizer, _sae(), PROMPTS, max_new_tokens=6, labels={0: "zero"})
    given = response_effect(peft_model, tokenizer, _sae(), PROMPTS, max_new_tokens=6, labels={0: "zero"},
                            known={"base": base, "adapted": adapted})
    swapped = response_effect(peft_model, tokenizer, _sae(), PROMPTS, max_new_tokens=6, labels={0: "zero"},
                              known={"base": adapted, "adapted": base})
    same = [json.dumps(r.to_dict(), sort_keys=True) for r in (fresh, given, swapped)]  # NaN: as text
    assert same[1] == same[0] and same[2] != same[0]

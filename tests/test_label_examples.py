from __future__ import annotations

import pytest
import torch

from saelign.errors import SaelignError
from saelign.label.contexts import ContextExample
from saelign.label.examples import (
    context_at_template,
    example_grain,
    last_prompt_token_is_template,
    prompt_activations,
    prompt_examples,
    template_mask,
    template_runs,
)
from saelign.sae import SAE, SAEConfig
from saelign.sails.generate import chat_text


def test_template_mask_marks_the_chat_frame_and_not_the_message(tokenizer):
    text = chat_text(tokenizer, "How do I bake bread?")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    mask = template_mask(torch.tensor(ids), tokenizer).tolist()
    tokens = [tokenizer.decode([i]) for i in ids]
    assert tokens[-1] == "\n" and mask[-1]  # the assistant-start newline is a template position
    assert tokens[0] == "<|im_start|>" and mask[0]
    assert not any(mask[i] for i in range(len(ids)) if tokens[i] in ("How", " bake", " bread"))
    # a newline inside ordinary prose is not a template position
    prose = tokenizer("bake\nbread", add_special_tokens=False)["input_ids"]
    assert not template_mask(torch.tensor(prose), tokenizer).any()


def test_template_runs_come_from_the_tokenizer_not_fixed_ids(tokenizer):
    runs = template_runs(tokenizer)
    decoded = [tokenizer.decode(r) for r in runs]
    assert decoded == ["<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"]
    assert last_prompt_token_is_template(tokenizer)


def test_grain_follows_where_the_top_contexts_sit(tokenizer):
    at_template = ContextExample("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant", "\n", "", 2.0, 0, 9)
    in_prose = ContextExample("Mix flour, water, salt and", " yeast", ".", 1.5, 1, 6)
    assert context_at_template(at_template, tokenizer) and not context_at_template(in_prose, tokenizer)
    assert example_grain([at_template, at_template, in_prose], tokenizer) == "prompt"
    assert example_grain([at_template, in_prose, in_prose], tokenizer) == "token"
    assert example_grain([], tokenizer) == "token"


def test_prompt_examples_rank_whole_prompts_both_ways():
    prompts = ["a", "b", "c", "d"]
    acts = torch.tensor([[0.0, 3.0], [2.0, 1.0], [5.0, 0.0], [1.0, 2.0]])
    out = prompt_examples(acts, prompts, [7, 9], n=2)
    top, bottom = out[7]
    assert [(e.prompt, e.activation) for e in top] == [("c", 5.0), ("b", 2.0)]
    assert [e.prompt for e in bottom] == ["a", "d"]
    assert [e.prompt for e in out[9][0]] == ["a", "d"]
    with pytest.raises(SaelignError, match="empty"):
        prompt_examples(torch.zeros(0, 2), [], [7, 9])
    with pytest.raises(SaelignError, match="shape"):
        prompt_examples(acts, prompts, [7])


def test_prompt_activations_read_the_last_token(tiny_llama, tokenizer):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=32, d_sae=16, activation="relu", hookpoint="model.layers.1"))
    prompts = ["How do I bake bread?", "hello world"]
    acts = prompt_activations(tiny_llama, tokenizer, sae, "model.layers.1", prompts, [3, 5])
    assert acts.shape == (2, 2)
    from saelign.models import forward_capture

    ids = tokenizer(chat_text(tokenizer, prompts[1]), add_special_tokens=False)["input_ids"]
    resid = forward_capture(tiny_llama, ["model.layers.1"], torch.tensor([ids]))["model.layers.1"][0, -1]
    assert torch.allclose(acts[1], sae.encode(resid)[[3, 5]].detach(), atol=1e-5)
    with pytest.raises(SaelignError, match="0..15"):
        prompt_activations(tiny_llama, tokenizer, sae, "model.layers.1", prompts, [16])

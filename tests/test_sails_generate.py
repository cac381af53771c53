"""Batched greedy generation: left padding must not change answers, order is kept, context overflow is an error."""

from __future__ import annotations

import pytest

from conftest import make_tiny_model
from saelign.errors import SaelignError
from saelign.sails.generate import chat_text, encode_chat, generate_answers

PROMPTS = ["Hi", "How do I bake bread? Mix flour, water, salt and yeast.", "Paris is the capital of", "The quick brown fox"]


def test_batched_answers_equal_one_at_a_time_answers(tokenizer):
    # Untied embeddings: a tiny random model with tied ones just repeats the template's last token ("\n").
    model = make_tiny_model("qwen2", len(tokenizer))
    batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # different prompts, different continuations: the order really is kept


def test_chat_template_is_used_and_lengths_match(tokenizer):
    text = chat_text(tokenizer, "Hello")
    assert text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert encode_chat(tokenizer, ["Hello"]) == [tokenizer(text, add_special_tokens=False)["input_ids"]]


def test_model_without_chat_template_gets_a_plain_frame(tokenizer):
    model = make_tiny_model("gpt2", len(tokenizer))
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        assert chat_text(tokenizer, "Hi") == "User: Hi\nAssistant:"
        assert len(generate_answers(model, tokenizer, ["Hi", "Hello there"], max_new_tokens=3)) == 2
    finally:
        tokenizer.chat_template = template


def test_prompt_that_overflows_the_context_is_an_error(tiny_llama, tokenizer):
    with pytest.raises(SaelignError, match=r"prompt 1 .* exceeds the model context of 256"):
        generate_answers(tiny_llama, tokenizer, ["short", "word " * 300], max_new_tokens=4)
    with pytest.raises(SaelignError, match="must be positive"):
        generate_answers(tiny_llama, tokenizer, ["x"], max_new_tokens=0)
    assert generate_answers(tiny_llama, tokenizer, [], max_new_tokens=4) == []

"""Chat encoding: the prompt ends at the assistant header, the response ends at the end-of-turn token."""

from __future__ import annotations

from saelign.sails.chat import encode_pair
from saelign.sails.generate import encode_chat


def test_pair_splits_at_the_generation_prompt_and_ends_at_end_of_turn(tokenizer):
    prompt_ids, response_ids = encode_pair(tokenizer, "How do I bake bread?", "Mix flour and water.")
    assert prompt_ids == encode_chat(tokenizer, ["How do I bake bread?"])[0]
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response_ids) == "Mix flour and water.<|im_end|>"  # the template's trailing newline is dropped


def test_tokenizer_without_chat_template_uses_the_plain_frame(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    prompt_ids, response_ids = encode_pair(plain, "hi", "hello")
    assert plain.decode(prompt_ids) == "User: hi\nAssistant:"
    assert plain.decode(response_ids) == " hello<|im_end|>"

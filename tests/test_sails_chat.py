"""Chat encoding: the prompt ends at the assistant header, the response ends at the end-of-turn token."""

from __future__ import annotations

import torch

from saelign.sails.chat import encode_pair, encode_prompt, pad_right


def test_pair_splits_at_the_generation_prompt_and_ends_at_end_of_turn(tokenizer):
    prompt_ids, response_ids = encode_pair(tokenizer, "How do I bake bread?", "Mix flour and water.")
    assert prompt_ids == encode_prompt(tokenizer, "How do I bake bread?")
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response_ids) == "Mix flour and water.<|im_end|>"  # the template's trailing newline is dropped


def test_pad_right_keeps_tokens_at_their_positions():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0]]))


def test_tokenizer_without_chat_template_uses_the_plain_frame(tokenizer):
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    prompt_ids, response_ids = encode_pair(plain, "hi", "hello")
    assert plain.decode(prompt_ids) == "User: hi\nAssistant:"
    assert plain.decode(response_ids) == " hello<|im_end|>"

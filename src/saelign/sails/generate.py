"""Greedy chat answers: the base model's own answers (training targets) and judge/eval outputs.

Prompts are wrapped in the tokenizer's chat template and decoded by `saelign.text.greedy_decode`."""

from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.text import greedy_decode, pad_token_id, stop_ids, token_ids


def chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as one user turn plus the assistant header; a plain 'User/Assistant' frame without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return f"User: {prompt}\nAssistant:"


def encode_chat(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """The chat-formatted prompts' token ids, as `generate_answers` feeds them."""
    return token_ids(tokenizer, [chat_text(tokenizer, p) for p in prompts], special_tokens=False)


def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """Greedy answers to `prompts` (in order), until an end token, without special tokens, stripped."""
    tokens = greedy_decode(model, encode_chat(tokenizer, prompts), max_new_tokens, pad_token_id(tokenizer),
                           stop_ids(model, tokenizer), batch_size)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]

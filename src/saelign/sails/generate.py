"""Batched greedy chat generation: the base model's own answers (training targets) and judge/eval outputs.

Prompts are wrapped in the tokenizer's chat template, left-padded so every row's last token is the generation
point, and processed longest-first so each batch pads little. A prompt that does not fit the model's context
together with `max_new_tokens` is an error, never silently truncated: a cut prompt would be a different request.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.progress import logger, progress


def chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as one user turn plus the assistant header; a plain 'User/Assistant' frame without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return f"User: {prompt}\nAssistant:"


def context_length(model: PreTrainedModel) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_lengths(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[int]:
    """Token counts of the chat-formatted prompts, as `generate_answers` will feed them."""
    texts = [chat_text(tokenizer, p) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """Greedy answers to `prompts` (in order), decoded without special tokens and stripped."""
    if max_new_tokens <= 0 or batch_size <= 0:
        raise SaelignError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be positive")
    if not prompts:
        return []
    texts = [chat_text(tokenizer, p) for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    limit = context_length(model)
    if limit is not None:
        for i, ids in enumerate(encoded):
            if len(ids) + max_new_tokens > limit:
                raise SaelignError(f"prompt {i} ({prompts[i][:60]!r}...) has {len(ids)} tokens; with max_new_tokens="
                                   f"{max_new_tokens} it exceeds the model context of {limit}; shorten the prompt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise SaelignError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token before generating")
    stop = _stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    bar = progress(total=len(prompts), desc="generating", unit="prompt")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids = encoded[i]
                input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                mask[r, width - len(ids):] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stop or None,
                                 top_p=None, top_k=None, temperature=None)
            for r, i in enumerate(rows):
                answers[i] = tokenizer.decode(out[r, width:], skip_special_tokens=True).strip()
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    logger.debug(f"generated {len(prompts)} answers (max {max_new_tokens} new tokens each)")
    return answers

"""The opening every row of a batch shares (a chat template's system turn), read once for all of them.

SmolLM2's chat template opens every prompt with the same 26-token system turn: a third of an SFT sequence and
most of a short prompt. Reading it once and repeating its KV cache over the rows gives the rows the same
numbers at fewer tokens; the repeat is differentiable, so training gets the same gradients too. Dropout, where
a model has it, draws one mask for the opening of all rows."""

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

# Below this many tokens a shared opening saves less than the extra forward that reads it.
MIN_SHARED_PREFIX = 4


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading ids every prompt shares, leaving each at least one of its own; 0 when fewer than
    `MIN_SHARED_PREFIX` or fewer than two prompts."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def shared_opening(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """`shared_prefix_length` of a right-padded batch's rows."""
    return shared_prefix_length([row[:int(n)].tolist() for row, n in zip(ids, mask.sum(1), strict=True)])


def opening_cache(model: nn.Module, opening: Sequence[int], rows: int) -> Cache | None:
    """The KV cache of `opening` read once, repeated for `rows` batch rows; None (the caller then reads the
    opening in every row) unless every layer's cache is plain full attention: a sliding-window layer keeps
    the last tokens of its cache, and pads after the opening would take their place in the window."""
    config = getattr(model, "config", None)
    if config is None:  # not a transformers model: no cache to build
        return None
    cache = DynamicCache(config=config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    device = next(model.parameters()).device
    last = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    ids = torch.tensor([list(opening)], device=device)
    model(input_ids=ids, past_key_values=cache, use_cache=True, **last)
    cache.batch_repeat_interleave(rows)
    return cache


def forward_after_opening(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, limit: int | None = None,
                          **kwargs: Any) -> tuple[Any, int]:
    """(the model's output, shared): the output covers positions `shared`.. of each row of a right-padded
    batch, the first `shared` tokens (the shared opening, at most `limit`) read once for all rows; shared is
    0, and the output the plain forward's, when the rows share too little (or `limit` is 0: sharing off)."""
    shared = 0 if limit == 0 else shared_opening(ids, mask)  # sharing off: not even looked for
    shared = min(shared, limit) if limit is not None else shared
    cache = opening_cache(model, ids[0, :shared].tolist(), len(ids)) if shared >= MIN_SHARED_PREFIX else None
    if cache is None:
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs), 0
    positions = torch.arange(shared, ids.shape[1], device=ids.device).expand(len(ids), -1)
    out = model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, **kwargs)
    return out, shared


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model (under a PEFT wrapper, its base model) can skip the LM head on early positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters

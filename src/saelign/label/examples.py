"""Examples at the grain a latent is read at.

A latent read at a chat-template position (the newline after `<|im_start|>assistant`, `<|im_end|>`, BOS...)
summarises the whole request before it: its token window is template tokens and says nothing, so its examples
are whole user messages ranked by the latent's value at that position. Everywhere else the token window with
the activating token highlighted stays the example.

Template positions are found from the tokenizer alone: its special tokens, plus the token runs its chat
template writes around a user message (rendered once around a sentinel), wherever those runs occur in a
sequence."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.label.contexts import ContextExample
from saelign.sae import SAE

_SENTINEL = "SAELIGNSENTINELMESSAGE"
Grain = str  # "prompt" (whole requests) or "token" (token windows)


@dataclass
class PromptExample:
    prompt: str
    activation: float


def _chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    from saelign.sails.generate import chat_text  # lazy: saelign.sails imports the label package

    return chat_text(tokenizer, prompt)


def template_runs(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The token-id runs the chat template puts before and after a user message (empty runs dropped)."""
    before, after = _chat_text(tokenizer, _SENTINEL).split(_SENTINEL)
    runs = [tokenizer(part, add_special_tokens=False)["input_ids"] for part in (before, after)]
    return [run for run in runs if run]


def template_mask(input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                  runs: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """[B, T] bool: special tokens and every token of an occurrence of a template run."""
    ids = input_ids if input_ids.ndim == 2 else input_ids[None]
    mask = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, dtype=ids.dtype))
    for run in template_runs(tokenizer) if runs is None else runs:
        if not run or len(run) > ids.shape[1]:
            continue
        pattern = torch.tensor(list(run), dtype=ids.dtype)
        hits = (ids.unfold(1, len(run), 1) == pattern).all(-1)  # [B, T-len+1]
        for k in range(len(run)):
            mask[:, k : k + hits.shape[1]] |= hits
    return mask if input_ids.ndim == 2 else mask[0]


def last_prompt_token_is_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the position SAILS reads by default (the last chat-formatted prompt token) is template text."""
    ids = tokenizer(_chat_text(tokenizer, "Hello there."), add_special_tokens=False)["input_ids"]
    return bool(template_mask(torch.tensor(ids), tokenizer)[-1])


def context_at_template(example: ContextExample, tokenizer: PreTrainedTokenizerBase,
                        runs: Sequence[Sequence[int]] | None = None) -> bool:
    """Whether a token-window example's token sits in template text (its left window re-tokenised)."""
    ids = tokenizer(example.text_left + example.token, add_special_tokens=False)["input_ids"]
    return bool(ids) and bool(template_mask(torch.tensor(ids), tokenizer, runs)[-1])


def example_grain(contexts: Sequence[ContextExample], tokenizer: PreTrainedTokenizerBase) -> Grain:
    """'prompt' when most of a latent's top contexts sit at template positions, else 'token'."""
    runs = template_runs(tokenizer)
    at_template = sum(context_at_template(c, tokenizer, runs) for c in contexts)
    return "prompt" if contexts and 2 * at_template > len(contexts) else "token"


def prompt_examples(acts: torch.Tensor, prompts: Sequence[str], latents: Sequence[int], n: int = 5
                    ) -> dict[int, tuple[list[PromptExample], list[PromptExample]]]:
    """{latent: (n prompts that drive it most, n that drive it least)}; acts is [n_prompts, len(latents)]."""
    if not prompts:
        raise SaelignError("the example set is empty: give at least one prompt to rank")
    if acts.shape != (len(prompts), len(latents)):
        raise SaelignError(f"activations have shape {tuple(acts.shape)}, "
                           f"expected ({len(prompts)}, {len(latents)})")
    k = min(n, len(prompts))
    top_values, top_rows = acts.float().topk(k, dim=0)
    low_values, low_rows = acts.float().topk(k, dim=0, largest=False)
    def column(rows: torch.Tensor, values: torch.Tensor, col: int) -> list[PromptExample]:
        pairs = zip(rows[:, col].tolist(), values[:, col].tolist(), strict=True)
        return [PromptExample(prompts[r], float(v)) for r, v in pairs]

    return {latent: (column(top_rows, top_values, col), column(low_rows, low_values, col))
            for col, latent in enumerate(latents)}


def prompt_activations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE, hookpoint: str,
                       prompts: Sequence[str], latents: Sequence[int] | None = None,
                       batch_size: int = 8) -> torch.Tensor:
    """[n_prompts, n_latents] latent values at the last chat-formatted prompt token (as selection reads)."""
    from saelign.sails.select import FeatureSelectConfig, latent_activations

    if not prompts:
        raise SaelignError("the example set is empty: give at least one prompt")
    ids = list(range(sae.d_sae)) if latents is None else [int(i) for i in latents]
    if ids and not (0 <= min(ids) and max(ids) < sae.d_sae):
        raise SaelignError(f"feature ids must be in 0..{sae.d_sae - 1}; got {ids[:10]}")
    acts = latent_activations(model, tokenizer, sae, hookpoint, prompts,
                              FeatureSelectConfig(positions="last", batch_size=batch_size))
    return acts[:, ids]

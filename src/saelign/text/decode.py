"""Batched greedy decoding with the KV cache: SAILS answers, fact checks, concept swaps, guarded generation.

Prompts are left-padded with position ids counted from each row's first real token: every last prompt token
sits at index -1 (where `positions="last"` interventions write) and GPT-2-style models see unpadded positions,
so a batched answer is the answer to the prompt alone, as `model.generate(do_sample=False)` gives it.
Prompts that open alike (a chat template's system turn) share that opening: it is read once per batch and its
KV cache repeated for every row, the rows' own tokens left-padded after it (positions still count from 0).

Hooks are context-manager factories: `prompt_context()` is entered while the prompts are read,
`token_context()` while each generated token is read. An intervention as `prompt_context` edits only the
prompt, whose edited states stay in the KV cache (the AlignSAE swap protocol); as both, every token."""

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers import Cache, PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.progress import progress
from saelign.text.opening import accepts_logits_to_keep, opening_cache, shared_prefix_length
from saelign.text.padding import pad

Context = Callable[[], AbstractContextManager] | None
# Maps the last position's logits [batch, vocab] to the next token [batch]; None is greedy (argmax).
Pick = Callable[[torch.Tensor], torch.Tensor] | None


def sampler(temperature: float, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sampling at `temperature` from its own generator: the same seed gives the same tokens."""
    if temperature <= 0:
        raise SaelignError(f"temperature must be positive, got {temperature}")
    generator: torch.Generator | None = None

    def pick(logits: torch.Tensor) -> torch.Tensor:
        nonlocal generator
        if generator is None:  # on the logits' device, made when the first step is known
            generator = torch.Generator(logits.device).manual_seed(seed)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return pick


def stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end an answer: the tokenizer's end-of-sequence id and the model's generation config's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    return sorted(i for i in ids if i is not None)


def cut_at_stop(row: Sequence[int], stop: Collection[int]) -> list[int]:
    """`row` up to and including its first `stop` id (all of it without one), as generate() returns it."""
    return list(row[: next((k for k, t in enumerate(row) if t in stop), len(row) - 1) + 1])


def context_length(model: nn.Module) -> int | None:
    names = ("max_position_embeddings", "n_positions", "max_sequence_length")
    sizes = [getattr(getattr(model, "config", None), name, None) for name in names]
    return next((size for size in sizes if isinstance(size, int) and size > 0), None)


@torch.inference_mode()
def decode_steps(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                 prompt_context: Context = None, token_context: Context = None, pick: Pick = None,
                 stops: torch.Tensor | None = None, past: Cache | None = None) -> Iterator[torch.Tensor]:
    """The next token [batch] of a left-padded batch (greedy, or `pick`'s choice), one step per item,
    computed when asked for. With `stops` (and no `token_context`, whose edits are per row), a row that has
    emitted a stop id leaves the batch and its KV cache: the steps after that compute only the rows still
    going, and the finished rows are reported as stops[0] from then on. `past` is the KV cache of an opening
    every row shares (see `text.opening`), already one row per batch row; `ids` follow it."""
    opening = past.get_seq_length() if past is not None else 0
    positions = opening + (mask.cumsum(-1) - 1).clamp_min(0)
    if opening:
        mask = torch.cat([mask.new_ones(len(mask), opening), mask], dim=1)
    alive = torch.arange(len(ids), device=ids.device)  # the batch rows still decoded
    # Logits of the last position only, as generate() asks: the prompt's [batch, seq, vocab] is never built.
    last = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    with prompt_context() if prompt_context else nullcontext():
        step = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                     use_cache=True, **last)
    prune = stops is not None and len(stops) > 0 and token_context is None
    for made in range(1, max_new_tokens + 1):
        token = step.logits[:, -1].argmax(-1) if pick is None else pick(step.logits[:, -1])
        if len(alive) == len(ids):
            yield token
        else:
            yield torch.full((len(ids),), int(stops[0]), dtype=token.dtype, device=token.device).index_copy(
                0, alive, token)
        if made == max_new_tokens:
            return
        going = ~torch.isin(token, stops) if prune else None
        if going is not None and not going.all() and hasattr(step.past_key_values, "batch_select_indices"):
            keep = going.nonzero().squeeze(1)
            if len(keep) == 0:
                return
            alive, token, mask, positions = alive[keep], token[keep], mask[keep], positions[keep]
            step.past_key_values.batch_select_indices(keep)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        with token_context() if token_context else nullcontext():
            step = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                         past_key_values=step.past_key_values, use_cache=True)


def greedy_decode(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int,
                  stop: Collection[int] = (), batch_size: int = 16, prompt_context: Context = None,
                  token_context: Context = None, desc: str = "generating") -> list[list[int]]:
    """The greedy continuation ids of each prompt (non-empty ids, see `token_ids`), in order: `max_new_tokens`
    of them, or up to and including the first `stop` id (as generate() returns them). Prompts go longest
    first (less padding), the model in eval mode. A prompt that leaves the context no room for
    `max_new_tokens` is an error, never silently cut: a cut prompt would be a different request. Without a
    `prompt_context` (whose edits would miss a cached opening) the opening all prompts share is read once
    per batch (`shared_prefix_length`)."""
    if max_new_tokens <= 0 or batch_size <= 0:
        raise SaelignError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be "
                           "positive")
    limit = context_length(model)
    for i, row in enumerate(prompts):
        if limit and len(row) + max_new_tokens > limit:
            raise SaelignError(f"prompt {i} has {len(row)} tokens; with max_new_tokens={max_new_tokens} it "
                               f"exceeds the model context of {limit}; shorten the prompt")
    device = next(model.parameters()).device
    stops = torch.tensor(sorted(stop), dtype=torch.long, device=device)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    shared = shared_prefix_length(prompts) if prompt_context is None else 0
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    bar = progress(total=len(prompts), desc=desc, unit="prompt")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            past = None
            if shared:
                with torch.inference_mode():
                    past = opening_cache(model, prompts[rows[0]][:shared], len(rows))
            cut = shared if past is not None else 0
            ids, mask = pad([prompts[i][cut:] for i in rows], pad_id, left=True)
            ended = torch.zeros(len(rows), dtype=torch.bool, device=device)
            tokens = []
            for token in decode_steps(model, ids.to(device), mask.to(device), max_new_tokens, prompt_context,
                                      token_context, stops=stops, past=past):
                tokens.append(token)
                ended |= torch.isin(token, stops)
                if ended.all():
                    break
            for i, row in zip(rows, torch.stack(tokens, dim=1).tolist(), strict=True):
                out[i] = cut_at_stop(row, stop)
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return out

"""Running the model on concept prompts: activations at the concept position, answer tokens, greedy next tokens.

Batches are padded by hand so padding never depends on the tokenizer's `padding_side`. Capture pads on the
right and gathers each row's own concept position. Continuations pad on the left, with position ids counted
from the first real token, so every row's last prompt token sits at index -1 (where `positions="last"`
interventions write) and absolute-position models (GPT-2) see the same positions as without padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.models import forward_capture, resolve_hookpoints
from saelign.progress import progress


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise SaelignError(f"prompt(s) {empty[:5]} tokenise to nothing; every concept prompt needs at least one token")
    return ids


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise SaelignError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
    return int(pad)


def concept_activations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, hookpoint: str, texts: Sequence[str],
                        position: str | int | Sequence[int] = "last", batch_size: int = 16) -> torch.Tensor:
    """Activations [n, d] (fp32, CPU) at each prompt's concept token: its last token, token `position` of every
    prompt, or one token index per prompt (e.g. from `ontology.concept_token_index`)."""
    rows = _token_ids(tokenizer, texts)
    if position == "last":
        index = [-1] * len(rows)
    elif isinstance(position, int):
        index = [position] * len(rows)
    elif not isinstance(position, str) and len(position) == len(rows):
        index = [int(i) for i in position]
    else:
        raise SaelignError(f"position must be 'last', a token index or one index per prompt, got {position!r}")
    bad = [i for i, (r, p) in enumerate(zip(rows, index, strict=True)) if not -len(r) <= p < len(r)]
    if bad:
        raise SaelignError(f"concept position {index[bad[0]]} is outside prompt {bad[0]} ({len(rows[bad[0]])} tokens); "
                           "use 'last' or a valid token index")
    (hookpoint,) = resolve_hookpoints(model, [hookpoint])
    device = next(model.parameters()).device
    out = []
    for start in progress(range(0, len(rows), batch_size), desc="concept activations", unit="batch"):
        batch = rows[start:start + batch_size]
        ids, mask = _pad(batch, _pad_id(tokenizer), left=False)
        acts = forward_capture(model, [hookpoint], ids.to(device), mask.to(device))[hookpoint]
        where = torch.tensor([p % len(r) for r, p in zip(batch, index[start:start + batch_size], strict=True)],
                             device=acts.device)
        out.append(acts[torch.arange(len(batch), device=acts.device), where].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """The first token the model would emit for each answer right after its prompt [n]."""
    out = []
    for text, answer in zip(texts, answers, strict=True):
        if not answer.strip():
            raise SaelignError(f"empty answer for prompt {text[:60]!r}; every example needs an answer")
        sep = "" if text.endswith((" ", "\n")) else " "
        prompt = tokenizer(text, add_special_tokens=True)["input_ids"]
        full = tokenizer(text + sep + answer.strip(), add_special_tokens=True)["input_ids"]
        if full[:len(prompt)] == prompt and len(full) > len(prompt):
            out.append(full[len(prompt)])
        else:  # the separator merged into the prompt's last token; fall back to the answer on its own
            out.append(tokenizer(sep + answer.strip(), add_special_tokens=False)["input_ids"][0])
    return torch.tensor(out, dtype=torch.long)


@torch.inference_mode()
def greedy_continuations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_new_tokens: int = 1,
                         batch_size: int = 16, prompt_context: Callable[[], AbstractContextManager] | None = None,
                         generation_context: Callable[[], AbstractContextManager] | None = None) -> torch.Tensor:
    """Greedy continuation tokens [n, max_new_tokens] of each prompt (no early stop).

    `prompt_context()` (e.g. an intervention) is active only while the prompts are read; the tokens after them
    are decoded from the KV cache outside it, as in the authors' swap evaluation, unless `generation_context()`
    is given: it is active while each generated token is read.
    """
    rows = _token_ids(tokenizer, texts)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        ids, mask = _pad(rows[start:start + batch_size], _pad_id(tokenizer), left=True)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        with prompt_context() if prompt_context else nullcontext():
            step = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        tokens = [step.logits[:, -1].argmax(-1)]
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            with generation_context() if generation_context else nullcontext():
                step = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=positions,
                             past_key_values=step.past_key_values, use_cache=True)
            tokens.append(step.logits[:, -1].argmax(-1))
        out.append(torch.stack(tokens, dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, max_new_tokens, dtype=torch.long)


def concept_offsets(tokenizer: PreTrainedTokenizerBase, examples: Sequence[object]) -> list[int]:
    """Each example's concept token as a negative offset from its prompt's end (-1 = last token).

    Examples with a `char_index` (ontology ConceptExamples) use the token covering that character; others
    use their last token. Negative offsets suit both right-padded capture and left-padded interventions.
    """
    from saelign.align.ontology import concept_token_index

    offsets = []
    for ex in examples:
        text, char = ex.text, getattr(ex, "char_index", None)  # type: ignore[attr-defined]
        if char is None:
            offsets.append(-1)
            continue
        n = len(tokenizer(text, add_special_tokens=True)["input_ids"])
        offsets.append(concept_token_index(tokenizer, text, char) - n)
    return offsets


def example_activations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, hookpoint: str, examples: Sequence[object],
                        batch_size: int = 16) -> torch.Tensor:
    """Activations [n, d] at each ontology example's concept token (see `concept_offsets`)."""
    texts = [ex.text for ex in examples]  # type: ignore[attr-defined]
    return concept_activations(model, tokenizer, hookpoint, texts, concept_offsets(tokenizer, examples), batch_size)

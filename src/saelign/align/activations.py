"""Running the model on concept prompts: activations at the concept position and answer tokens.

Capture pads on the right (so padding never depends on the tokenizer's `padding_side`) and gathers each row's
own concept position."""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError, require
from saelign.models import forward_capture, resolve_hookpoints
from saelign.progress import progress
from saelign.text import pad, pad_token_id, token_ids


def concept_activations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, hookpoint: str, texts: Sequence[str],
                        position: str | int | Sequence[int] = "last", batch_size: int = 16) -> torch.Tensor:
    """Activations [n, d] (fp32, CPU) at each prompt's concept token: its last token, token `position` of every
    prompt, or one token index per prompt (e.g. from `ontology.concept_token_index`)."""
    rows = token_ids(tokenizer, texts)
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
        ids, mask = pad(batch, pad_token_id(tokenizer))
        acts = forward_capture(model, [hookpoint], ids.to(device), mask.to(device))[hookpoint]
        where = torch.tensor([p % len(r) for r, p in zip(batch, index[start:start + batch_size], strict=True)],
                             device=acts.device)
        out.append(acts[torch.arange(len(batch), device=acts.device), where].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """The first token the model would emit for each answer right after its prompt [n]."""
    out = []
    for text, answer in zip(texts, answers, strict=True):
        require(answer.strip(), f"empty answer for prompt {text[:60]!r}; every example needs an answer")
        sep = "" if text.endswith((" ", "\n")) else " "
        prompt = tokenizer(text, add_special_tokens=True)["input_ids"]
        full = tokenizer(text + sep + answer.strip(), add_special_tokens=True)["input_ids"]
        if full[:len(prompt)] == prompt and len(full) > len(prompt):
            out.append(full[len(prompt)])
        else:  # the separator merged into the prompt's last token; fall back to the answer on its own
            out.append(tokenizer(sep + answer.strip(), add_special_tokens=False)["input_ids"][0])
    return torch.tensor(out, dtype=torch.long)


def concept_offsets(tokenizer: PreTrainedTokenizerBase, examples: Sequence[object]) -> list[int]:
    """Each example's concept token as a negative offset from its prompt's end (-1 = last token).
    Examples with a `char_index` (ontology ConceptExamples) use the token covering that character; others
    use their last token. Negative offsets suit both right-padded capture and left-padded interventions."""
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

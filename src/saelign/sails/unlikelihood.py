"""The refusal-unlikelihood term of SFT: it pushes down a refusal's probability where the answer should help.

A safety fine-tune learns to refuse harmful requests, and refuses harmless ones too (over-refusal): the
cross-entropy on the harmless answers raises those answers but never says "not a refusal here". This term
does (unlikelihood training, Welleck et al. 2019): for a harmless prompt, an unwanted response (a refusal of
the kind the harmful targets teach) and the wanted one (the base model's answer), it adds -log(1 - p(token))
for the unwanted response's first `tokens` tokens after the prefix it shares with the wanted one. The
shared prefix is left out, so a refusal and an answer that both open with "I" do not teach the model to avoid
"I". Only the first tokens count: once a response has opened as a refusal the rest follows, and that opening
is where the decision is made."""

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError

IGNORE = -100  # a label no loss reads (sft uses this one too)
# a token's probability is capped below 1 so -log(1 - p) stays finite where the model is already sure of it
_MAX_PROBABILITY = 1 - 1e-6

# (prompt, unwanted response, wanted response)
Contrast = tuple[str, str, str]
# (tokenizer, prompt, response) -> (prompt ids, response ids): how sft turns a pair into tokens
PairEncoder = Callable[[PreTrainedTokenizerBase, str, str], tuple[list[int], list[int]]]


def encode_contrasts(tokenizer: PreTrainedTokenizerBase, contrasts: Sequence[Contrast], tokens: int,
                     max_length: int, encode: PairEncoder,
                     skip: int = 0) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per contrast: labels are the unwanted response's first `tokens` tokens after its
    common prefix with the wanted response and `skip` more (teacher-forced, not pushed: skip=1 leaves a
    refusal's opening word, such as "I", alone and pushes what follows it), IGNORE elsewhere; the sequence
    ends at the last labelled token.
    Contrasts whose unwanted response is a prefix of the wanted one, or that leave no label within
    `max_length`, are dropped."""
    examples = []
    for prompt, unwanted, wanted in contrasts:
        prompt_ids, unwanted_ids = encode(tokenizer, prompt, unwanted)
        _, wanted_ids = encode(tokenizer, prompt, wanted)
        shared = next((i for i, (a, b) in enumerate(zip(unwanted_ids, wanted_ids, strict=False)) if a != b),
                      min(len(unwanted_ids), len(wanted_ids))) + skip
        pushed = unwanted_ids[shared:shared + tokens]
        end = min(len(prompt_ids) + shared + len(pushed), max_length)
        if not pushed or end <= len(prompt_ids) + shared:
            continue
        ids = (prompt_ids + unwanted_ids[:shared] + pushed)[:end]
        labels = ([IGNORE] * (len(prompt_ids) + shared) + pushed)[:end]
        examples.append((ids, labels))
    if contrasts and not examples:
        raise SaelignError(f"no refusal contrast keeps a token within max_length={max_length}: raise "
                           "sft.max_length or set sft.unlikelihood_weight to 0")
    return examples


def unlikelihood_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed -log(1 - p(target)) over the positions whose target is not IGNORE; `logits` [b, t, vocab]
    predict `targets` [b, t]."""
    labelled = targets != IGNORE
    log_p = logits.float().log_softmax(-1)[labelled].gather(-1, targets[labelled][:, None]).squeeze(-1)
    return -torch.log1p(-log_p.exp().clamp(max=_MAX_PROBABILITY)).sum()

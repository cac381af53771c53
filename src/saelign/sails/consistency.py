"""The register-consistency term of SFT: two wordings of one request should look the same to the model.

The adapter learns to refuse the registers it is trained on and not a register it never saw (README,
"Register coverage"): what it keys on is partly the wording. Activation consistency training (Irpan et al.
2025, "Consistency training helps stop sycophancy and jailbreaks") trains a model's internal state on one
wording of a prompt towards its state on another. Here both wordings are training prompts of one behaviour
asked in two registers ("twins"), neither more canonical, so the term is symmetric: per twin, the mean over
the model's blocks of the squared distance between the two last-prompt-token residuals (where the answer
starts), each block's distance divided by the pair's mean squared norm, held constant (so the term cannot
shrink by shrinking the states)."""

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.sails.data import Example
from saelign.sails.unlikelihood import PairEncoder
from saelign.text import pad
from saelign.text.opening import forward_after_opening

Twin = tuple[int, int]  # indices of two wordings of one behaviour in the training pairs


def twins_of(examples: Sequence[Example]) -> list[Twin]:
    """Index pairs of examples with the same behaviour and kind in different registers, each unordered pair
    once (a behaviour in three registers gives three twins), in order of first appearance."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        if example.behaviour:
            groups[(example.behaviour, example.kind)].append(index)
    return [(a, b) for members in groups.values() for i, a in enumerate(members) for b in members[i + 1:]
            if examples[a].register != examples[b].register]


def encode_twins(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], twins: Sequence[Twin],
                 encode: PairEncoder) -> list[tuple[list[int], list[int]]]:
    """The prompt ids of each twin's two wordings, as SFT frames them (the response left empty)."""
    if not twins:
        raise SaelignError("sft.consistency_weight > 0 needs twins: training prompts of one behaviour in two "
                           "registers (the built-in data asks each behaviour in data.variants registers; set "
                           "data.variants to 2 or more)")
    for a, b in twins:
        if not (0 <= a < len(prompts) and 0 <= b < len(prompts)) or a == b:
            raise SaelignError(f"twin ({a}, {b}) does not name two of the {len(prompts)} training pairs")
    return [(encode(tokenizer, prompts[a], "")[0], encode(tokenizer, prompts[b], "")[0]) for a, b in twins]


def _last_states(model: nn.Module, rows: Sequence[list[int]], pad_id: int, device: torch.device,
                 share_opening: bool = True) -> torch.Tensor:
    """[blocks, rows, d]: each block's output residual at each row's last token (right padding); the rows'
    shared opening read once (`text.opening`) unless `share_opening` is off."""
    ids, mask = pad(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    out, shared = forward_after_opening(model, ids, mask, limit=None if share_opening else 0,
                                        output_hidden_states=True)
    last = mask.sum(1) - 1 - shared
    states = torch.stack(out.hidden_states[1:])  # after each block
    return states[:, torch.arange(len(rows), device=device), last].float()


def consistency_sum(model: nn.Module, twins: Sequence[tuple[list[int], list[int]]], pad_id: int,
                    device: torch.device, share_opening: bool = True) -> torch.Tensor:
    """Summed over twins: the mean over blocks of |h_a - h_b|^2 / ((|h_a|^2 + |h_b|^2) / 2), the denominator
    held constant. Differentiable in the model."""
    first = _last_states(model, [a for a, _ in twins], pad_id, device, share_opening)
    second = _last_states(model, [b for _, b in twins], pad_id, device, share_opening)
    scale = ((first.pow(2).sum(-1) + second.pow(2).sum(-1)) / 2).detach().clamp_min(1e-12)
    return ((first - second).pow(2).sum(-1) / scale).mean(0).sum()

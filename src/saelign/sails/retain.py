"""The retain term of SFT: how far the adapted model's next-token distribution has moved from the base model's
on text where it should not change (generic prose), as KL(p_base || p_adapted) summed over token positions.

The base distribution comes from the same PEFT model with its adapters switched off (`disable_adapter`), so no
second copy of the model is kept; full fine-tuning has no such switch and is refused by `require_adapters`."""

import torch
import torch.nn.functional as F
from torch import nn

from saelign.errors import SaelignError


def require_adapters(model: nn.Module, option: str = "sft.retain_weight") -> None:
    """The retain term needs the base model's logits: a PEFT model gives them with its adapters off."""
    if not hasattr(model, "disable_adapter"):
        raise SaelignError(f"{option} > 0 needs a LoRA (PEFT) model, whose adapters can be switched off to "
                           f"read the base model; full fine-tuning has no frozen copy to compare with: set "
                           f"{option} to 0 for method full")


def retain_mask(contexts: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """[n, L] bool: the positions whose next-token distribution counts (every non-pad token; packed contexts
    are padded only at the end of the last one, so a pad never precedes a real token)."""
    return torch.ones_like(contexts, dtype=torch.bool) if pad_id is None else contexts != pad_id


def kl_to_base_sum(model: nn.Module, contexts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed KL(p_base || p_adapted) over the masked positions of `contexts` [n, L]; differentiable in the
    adapted model. One extra forward without gradient gives the base distribution."""
    require_adapters(model)

    def log_probs() -> torch.Tensor:
        logits = model(input_ids=contexts, attention_mask=mask.long(), use_cache=False).logits
        return logits.float().log_softmax(-1)

    with torch.no_grad(), model.disable_adapter():
        base = log_probs()
    # kl_div(input=log p_a, target=log p_b) = sum_v p_b (log p_b - log p_a) per position
    per_position = F.kl_div(log_probs(), base, log_target=True, reduction="none").sum(-1)
    return per_position[mask].sum()

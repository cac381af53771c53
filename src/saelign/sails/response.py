"""What the adapter changed in the answers: SAE features of the generated responses, base vs adapted.

Both models answer the same prompts greedily; both answers are then read by the base model (adapter off), so
the SAE sees the model it was trained on and the difference is what the answers contain (a refusal, an
apology, a recipe), not how the adapter shifts the reader. Residuals are averaged over the answer's tokens;
the latent ranking is `effect.latent_changes`, so the result has the prompt-side effect's shape and reads the
same way.

Answers already generated elsewhere (the eval stage keeps every greedy answer it judged) can be handed in as
`known` (prompt -> answer, per side): only the prompts missing there are generated, so a run does not decode
the same greedy answers twice."""

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.models import forward_capture
from saelign.sae.model import SAE
from saelign.sails.chat import encode_pair
from saelign.sails.effect import EffectResult, _adapter_off, latent_changes
from saelign.sails.generate import generate_answers
from saelign.text import pad, pad_token_id


@torch.inference_mode()
def response_residuals(model: nn.Module, tokenizer: PreTrainedTokenizerBase, hookpoint: str,
                       prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """[n, d] residual at `hookpoint` averaged over each answer's tokens (prompt + answer fed together)."""
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    pooled = []
    for start in range(0, len(prompts), batch_size):
        pairs = [encode_pair(tokenizer, p, a) for p, a in zip(prompts[start:start + batch_size],
                                                             answers[start:start + batch_size], strict=True)]
        ids, mask = pad([p + r for p, r in pairs], pad_id)
        acts = forward_capture(model, [hookpoint], ids.to(device), mask.to(device))[hookpoint].float().cpu()
        answer = torch.zeros_like(mask, dtype=torch.bool)
        for row, (prompt_ids, response_ids) in enumerate(pairs):
            # an empty answer still has its end-of-turn token (or, failing that, one position) to read
            answer[row, len(prompt_ids):len(prompt_ids) + max(len(response_ids), 1)] = True
        answer &= mask.bool()
        pooled.append((acts * answer[..., None]).sum(1) / answer.sum(1, keepdim=True).clamp_min(1))
    return torch.cat(pooled)


def response_effect(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE,
                    prompts: Mapping[str, Sequence[str]], max_new_tokens: int = 48, batch_size: int = 8,
                    top_n: int = 10,
                    labels: Mapping[int, str] | None = None, selected: Sequence[int] = (),
                    base_model: nn.Module | None = None,
                    known: Mapping[str, Mapping[str, str]] | None = None) -> EffectResult:
    """Latent changes of the answers of a PEFT `model` against its base (adapter off, or `base_model`).
    `known`: {"base": {prompt: answer}, "adapted": {...}}, greedy answers of at most `max_new_tokens` tokens
    already made; the rest are generated."""
    known = known or {}
    hookpoint = sae.cfg.hookpoint
    adapted_net = model.get_base_model() if hasattr(model, "get_base_model") else model
    reader = base_model if base_model is not None else adapted_net
    base, adapted = {}, {}
    for kind, texts in prompts.items():
        if not texts:
            continue
        texts = list(texts)
        adapted_answers = _answers(model, tokenizer, texts, max_new_tokens, batch_size,
                                   known.get("adapted", {}))
        with _adapter_off(model):
            base_answers = _answers(base_model or model, tokenizer, texts, max_new_tokens, batch_size,
                                    known.get("base", {}))
            base[kind] = response_residuals(reader, tokenizer, hookpoint, texts, base_answers, batch_size)
            adapted[kind] = response_residuals(reader, tokenizer, hookpoint, texts, adapted_answers,
                                               batch_size)
    return latent_changes(sae, base, adapted, None, top_n, labels, selected, hookpoint)


def _answers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
             max_new_tokens: int, batch_size: int, known: Mapping[str, str]) -> list[str]:
    """Greedy answers to `prompts`, taken from `known` where it has them, generated for the others."""
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    fresh = dict(zip(missing, generate_answers(model, tokenizer, missing, max_new_tokens, batch_size),
                     strict=True)) if missing else {}
    return [known[p] if p in known else fresh[p] for p in prompts]

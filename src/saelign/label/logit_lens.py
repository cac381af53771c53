"""Logit lens of SAE latents: which output tokens a latent's decoder direction promotes and suppresses.

score = W_U · (g ⊙ d), with d the unit decoder row, W_U the unembedding (`model.get_output_embeddings()`) and g
the final norm's per-channel gain used only as a diagonal scale. The norm's division by the input's RMS (or
standard deviation) is a positive per-token scalar: it does not change the ranking, and applying it to a lone
direction would be meaningless, so the direction is not re-normalised. LayerNorm's mean subtraction and bias and
an LM-head bias are direction-independent offsets and are left out for the same reason."""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError
from saelign.progress import logger
from saelign.sae import SAE


class TokenScore(NamedTuple):
    token: str
    token_id: int
    score: float


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied right before the LM head: the decoder stack's direct child whose class is a *Norm."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    norms = [child for _, child in decoder.named_children() if "norm" in type(child).__name__.lower()]
    return norms[-1] if norms else None


@torch.no_grad()
def norm_gain(norm: nn.Module | None, d_model: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The norm's effective per-channel gain, measured rather than read from `.weight`.
    Probing with a zero-mean, unit-RMS ±1 vector x gives norm(x) - norm(-x) = 2·x·g for RMSNorm and LayerNorm
    alike (bias and mean cancel), which also covers Gemma's `(1 + weight)` parametrisation and norms without
    weights. With odd d_model, LayerNorm's mean is 1/d_model off zero: a relative error of that size."""
    if norm is None:
        return torch.ones(d_model, device=device, dtype=torch.float32)
    probe = torch.ones(d_model, device=device, dtype=dtype)
    probe[1::2] = -1
    try:
        gain = (norm(probe[None]) - norm(-probe[None]))[0].float() / (2 * probe.float())
    except Exception as exc:  # an exotic norm signature: say which module, the user can pass another model
        raise SaelignError(f"cannot probe the final norm {type(norm).__name__} for the logit lens: {exc}") from exc
    if gain.shape != (d_model,):
        raise SaelignError(f"final norm {type(norm).__name__} maps width {d_model} to {tuple(gain.shape)}; logit lens needs a per-channel norm")
    return gain


@torch.no_grad()
def logit_scores(model: nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logit-lens scores of raw residual-space directions [n, d_model]."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise SaelignError(f"{type(model).__name__} has no output embedding (LM head); the logit lens needs a causal LM")
    unembed = head.weight
    if directions.shape[-1] != unembed.shape[1]:
        raise SaelignError(f"SAE decoder width {directions.shape[-1]} does not match the model's d_model {unembed.shape[1]}; "
                           "the logit lens needs an SAE on the residual stream of this model")
    gain = norm_gain(final_norm(model), unembed.shape[1], unembed.device, unembed.dtype)
    return (directions.to(unembed.device).float() * gain) @ unembed.float().T


def logit_lens(model: nn.Module, sae: SAE, latents: Sequence[int] | None = None, k: int = 10,
               tokenizer: PreTrainedTokenizerBase | None = None,
               chunk: int = 256) -> dict[int, tuple[list[TokenScore], list[TokenScore]]]:
    """{latent: (k most promoted tokens, k most suppressed tokens)}, best first; tokens decoded if a tokenizer is given."""
    ids = list(range(sae.d_sae)) if latents is None else [int(i) for i in latents]
    if ids and not (0 <= min(ids) and max(ids) < sae.d_sae):
        raise SaelignError(f"latent ids must be in 0..{sae.d_sae - 1}; got {ids[:10]}")
    if sae.cfg.hookpoint and not sae.cfg.hookpoint.rsplit(".", 1)[-1].isdigit():
        logger.warning(f"logit lens of an SAE on {sae.cfg.hookpoint}: meaningful only for residual-stream hookpoints")
    out: dict[int, tuple[list[TokenScore], list[TokenScore]]] = {}
    for start in range(0, len(ids), chunk):  # [chunk, vocab] scores at a time keeps memory flat for wide SAEs
        part = ids[start : start + chunk]
        scores = logit_scores(model, sae.decoder_directions(part))
        kk = min(k, scores.shape[1])
        up_values, up_ids = scores.topk(kk, dim=1)
        down_values, down_ids = scores.topk(kk, dim=1, largest=False)
        for row, latent in enumerate(part):
            out[latent] = (_token_scores(up_ids[row], up_values[row], tokenizer),
                           _token_scores(down_ids[row], down_values[row], tokenizer))
    return out


def _token_scores(ids: torch.Tensor, values: torch.Tensor, tokenizer: PreTrainedTokenizerBase | None) -> list[TokenScore]:
    id_list = ids.tolist()
    names = (tokenizer.batch_decode([[i] for i in id_list], clean_up_tokenization_spaces=False) if tokenizer is not None
             else [str(i) for i in id_list])
    return [TokenScore(name, i, float(v)) for name, i, v in zip(names, id_list, values.tolist(), strict=True)]

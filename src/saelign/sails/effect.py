"""What the adapter changed, in SAE features: latents before vs after fine-tuning on the same prompts.

Residual activations at the SAE's hookpoint, pooled as feature selection pools them, are taken with the base
and the adapted model and encoded by the SAE; the mean latent change per prompt kind ranks the latents the
adapter pushed up or down. The share of the residual change inside span(U) says how far it stayed in the
safety subspace."""

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from saelign.errors import SaelignError, require
from saelign.sae.model import SAE
from saelign.sails.select import FeatureSelectConfig, residual_activations


@dataclass
class LatentChange:
    latent: int
    delta: dict[str, float]  # kind -> mean(adapted - base) latent activation
    base: dict[str, float]  # kind -> mean base activation
    selected: bool
    label: str = ""


@dataclass
class EffectResult:
    hookpoint: str
    n_prompts: dict[str, int]
    top: dict[str, dict[str, list[LatentChange]]]  # kind -> "up"/"down" -> latents, largest change first
    subspace_share: dict[str, float]  # kind -> share of the residual change's energy inside span(U)
    chance_share: float  # what a random direction would give: r / d_model
    relative_change: dict[str, float]  # kind -> mean |adapted - base| / mean |base| of the residual
    # kind -> share of the listed latents that feature selection had picked
    selected_in_top: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        top = {kind: {way: [LatentChange(**row) for row in rows] for way, rows in ways.items()}
               for kind, ways in data["top"].items()}
        return cls(**{**data, "top": top})


def subspace_share(delta: torch.Tensor, basis: torch.Tensor) -> float:
    """Share of the summed squared norm of the rows of `delta` [n, d] that lies in span(basis) [d, r]."""
    total = float(delta.pow(2).sum())
    return float((delta @ basis).pow(2).sum()) / total if total > 0 else float("nan")


@torch.inference_mode()
def latent_changes(sae: SAE, base: Mapping[str, torch.Tensor], adapted: Mapping[str, torch.Tensor],
                   basis: torch.Tensor | None = None, top_n: int = 10, labels: Mapping[int, str] | None = None,
                   selected: Sequence[int] = (), hookpoint: str = "") -> EffectResult:
    """Rank latents by their mean change per kind from pooled residuals base[kind], adapted[kind] ([n, d], paired)."""
    require(set(base) == set(adapted), "base and adapted activations cover different prompt kinds: "
                                       f"{sorted(base)} vs {sorted(adapted)}")
    labels, chosen = labels or {}, set(selected)
    param = sae.W_enc
    deltas, means, top, shares, relative, overlap = {}, {}, {}, {}, {}, {}
    for kind in base:
        x0, x1 = base[kind].float(), adapted[kind].float()
        if x0.shape != x1.shape or x0.ndim != 2 or len(x0) == 0:
            raise SaelignError(f"{kind}: base and adapted activations must be equal, non-empty [n, d] tensors, "
                               f"got {tuple(x0.shape)} and {tuple(x1.shape)}")
        z0 = sae.encode(x0.to(device=param.device, dtype=param.dtype)).float().cpu()
        z1 = sae.encode(x1.to(device=param.device, dtype=param.dtype)).float().cpu()
        deltas[kind], means[kind] = (z1 - z0).mean(0), z0.mean(0)
        change = x1 - x0
        shares[kind] = subspace_share(change, basis.float().cpu()) if basis is not None else float("nan")
        relative[kind] = float(change.norm(dim=1).mean() / x0.norm(dim=1).mean().clamp_min(1e-12))

    def row(latent: int) -> LatentChange:
        return LatentChange(latent, {k: float(d[latent]) for k, d in deltas.items()},
                            {k: float(m[latent]) for k, m in means.items()}, latent in chosen, labels.get(latent, ""))

    for kind, delta in deltas.items():
        order = torch.argsort(delta, descending=True, stable=True)
        noise = 1e-5 * float(delta.abs().max())  # float rounding moves untouched latents by ~1e-7 relative
        up = [int(i) for i in order[:top_n] if delta[i] > noise]
        down = [int(i) for i in order.flip(0)[:top_n] if delta[i] < -noise]
        top[kind] = {"up": [row(i) for i in up], "down": [row(i) for i in down]}
        listed = up + down
        overlap[kind] = sum(i in chosen for i in listed) / len(listed) if listed else float("nan")
    d_model = next(iter(base.values())).shape[1]
    rank = basis.shape[1] if basis is not None else 0
    return EffectResult(hookpoint, {k: len(v) for k, v in base.items()}, top, shares, rank / d_model, relative, overlap)


def _adapter_off(model: nn.Module) -> contextlib.AbstractContextManager:
    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def adapter_effect(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sae: SAE,
                   prompts: Mapping[str, Sequence[str]], select_cfg: FeatureSelectConfig,
                   basis: torch.Tensor | None = None, top_n: int = 10, labels: Mapping[int, str] | None = None,
                   selected: Sequence[int] = (),
                   base_model: nn.Module | None = None) -> EffectResult:
    """Latent changes of an adapted `model` against its base: the PEFT model with its adapter switched off, or
    `base_model` (needed for a fully fine-tuned model). prompts maps kind -> prompts; the hookpoint is the SAE's."""
    hookpoint = sae.cfg.hookpoint or (select_cfg.hookpoints[0] if select_cfg.hookpoints else "")
    require(hookpoint, "the SAE records no hookpoint and none is configured; set the selection hookpoint")
    if base_model is None and not isinstance(model, PeftModel):
        raise SaelignError("a fully fine-tuned model has no adapter to switch off; pass the base model as base_model")
    adapted_net = model.get_base_model() if isinstance(model, PeftModel) else model  # module paths as in the base

    def pooled(net: nn.Module) -> dict[str, torch.Tensor]:
        return {kind: residual_activations(net, tokenizer, [hookpoint], list(p), select_cfg)[hookpoint]
                for kind, p in prompts.items() if p}

    adapted = pooled(adapted_net)
    if base_model is not None:
        base = pooled(base_model)
    else:
        with _adapter_off(model):
            base = pooled(adapted_net)
    return latent_changes(sae, base, adapted, basis, top_n, labels, selected, hookpoint)

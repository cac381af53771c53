"""SAE evaluation: reconstruction quality and sparsity on stored activations, and the SAE spliced into the model.

Reconstruction (over all evaluated tokens): MSE per element, FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖², explained
variance = 1 − FVU, L0 = mean active latents per token, per-latent firing frequency, dead fraction (never fired)
and dense fraction (fires on more than `dense_threshold` of tokens).

Splice (needs the model): next-token cross-entropy with clean activations, with the SAE reconstruction written
back at the hookpoint, and with the hookpoint zero-ablated; CE recovered = (CE_zero − CE_sae) / (CE_zero −
CE_clean), and KL(clean ‖ spliced) per token. The SAE never saw the positions capture masks (special/pad
tokens, the first position of each context), so they keep their clean activations in both interventions, and
a prediction counts only when both its position and its target are unmasked."""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saelign.configs import help_field
from saelign.errors import SaelignError, require
from saelign.io import ensure_writable_dir, write_json_atomic
from saelign.models.hookpoints import patch_output
from saelign.progress import progress
from saelign.report.plots import histogram, save_figure
from saelign.sae.model import SAE
from saelign.store.capture import keep_mask

EVAL_FILE = "eval.json"
DENSITY_PLOT = "feature_density.png"


@dataclass
class EvalConfig:
    batch_size: int = help_field(4096, "activation rows per SAE batch")
    max_tokens: int = help_field(0, "activation rows read from the store (0 = all of it)")
    dense_threshold: float = help_field(0.1, "a latent firing on more than this share of tokens counts as dense")
    n_contexts: int = help_field(32, "corpus contexts for the CE-loss/KL splice evaluation (0 = skip it)")
    context_batch_size: int = help_field(8, "contexts per forward pass in the splice evaluation")
    corpus: str = help_field("", "corpus for the splice evaluation ('' = the store's corpus)")
    skip_contexts: int = help_field(-1, "corpus contexts skipped before the splice contexts (-1 = those the store covers, so the text is unseen)")
    out: str = help_field("sae_eval", "output folder for eval.json and feature_density.png")

    def __post_init__(self) -> None:
        for name in ("batch_size", "context_batch_size"):
            require(getattr(self, name) >= 1, f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.dense_threshold <= 1:
            raise SaelignError(f"dense_threshold must lie in [0, 1], got {self.dense_threshold}")


@torch.inference_mode()
def reconstruction_metrics(sae: SAE, batches: Iterable[torch.Tensor], dense_threshold: float = 0.1) -> dict[str, Any]:
    """Streaming reconstruction and sparsity metrics; `firing_frequency` is a [d_sae] tensor."""
    device = sae.W_enc.device
    n, sse, active = 0, 0.0, 0
    mean = torch.zeros(sae.d_in, dtype=torch.float64, device=device)
    m2 = 0.0  # Σ‖x − mean‖², merged batch by batch (Chan et al.) so large means do not cancel catastrophically
    fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    for x in progress(batches, desc="eval", unit="batch"):
        x = x.to(device=device, dtype=torch.float32)
        if x.numel() == 0:
            continue
        z = sae.encode(x)
        sse += float((sae.decode(z) - x).double().pow(2).sum())
        nonzero = z != 0
        active += int(nonzero.sum())
        fired += nonzero.sum(0)
        xd = x.double()
        b = xd.shape[0]
        batch_mean = xd.mean(0)
        delta = batch_mean - mean
        m2 += float((xd - batch_mean).pow(2).sum()) + float(delta.pow(2).sum()) * n * b / (n + b)
        mean += delta * b / (n + b)
        n += b
    require(n != 0, "no activations to evaluate: the store (or --max-tokens) gives zero rows")
    frequency = (fired.double() / n).float().cpu()
    fvu = sse / m2 if m2 > 0 else float("nan")
    return {"tokens": n, "mse": sse / (n * sae.d_in), "fvu": fvu, "explained_variance": 1 - fvu,
            "l0": active / n, "dead_fraction": float((frequency == 0).float().mean()),
            "dense_fraction": float((frequency > dense_threshold).float().mean()),
            "firing_frequency": frequency}


def _masked_splice(keep: torch.Tensor, fn) -> Any:
    """A hookpoint patch that rewrites only the unmasked positions."""
    def patch(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[keep] = fn(h[keep].float()).to(h.dtype)
        return out
    return patch


def _next_token_logprobs(model: nn.Module, input_ids: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1][counted]
    return F.log_softmax(logits.float(), dim=-1)


@torch.inference_mode()
def splice_metrics(sae: SAE, model: nn.Module, hookpoint: str, token_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """CE loss clean / SAE-spliced / zero-ablated and KL(clean ‖ spliced), over (input_ids, keep) batches."""
    device = next(model.parameters()).device
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    count = 0
    for input_ids, keep in progress(token_batches, desc="splice eval", unit="batch"):
        input_ids, keep = input_ids.to(device), keep.to(device)
        counted = keep[:, :-1] & keep[:, 1:]  # position t predicts token t+1; both must be unmasked
        if not counted.any():
            continue
        targets = input_ids[:, 1:][counted]
        clean = _next_token_logprobs(model, input_ids, counted)
        with patch_output(model, hookpoint, _masked_splice(keep, lambda h: sae(h.to(sae.W_enc.device)).to(h.device))):
            spliced = _next_token_logprobs(model, input_ids, counted)
        with patch_output(model, hookpoint, _masked_splice(keep, torch.zeros_like)):
            zero = _next_token_logprobs(model, input_ids, counted)
        for name, lp in (("clean", clean), ("sae", spliced), ("zero", zero)):
            totals[name] += float(F.nll_loss(lp, targets, reduction="sum"))
        totals["kl"] += float(F.kl_div(spliced, clean, log_target=True, reduction="sum"))
        count += int(counted.sum())
    if count == 0:
        raise SaelignError("the splice evaluation found no unmasked next-token predictions; use longer contexts or more text")
    ce = {name: totals[name] / count for name in ("clean", "sae", "zero")}
    gap = ce["zero"] - ce["clean"]
    recovered = (ce["zero"] - ce["sae"]) / gap if abs(gap) > 1e-9 else None
    return {"predictions": count, "ce_loss_clean": ce["clean"], "ce_loss_sae": ce["sae"],
            "ce_loss_zero": ce["zero"], "ce_loss_recovered": recovered, "kl_div": totals["kl"] / count}


def context_batches(contexts: Iterable[torch.Tensor], masked_ids: Iterable[int], mask_first_position: bool,
                    batch_size: int, n_contexts: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids [b, T], keep [b, T]) batches from a stream of [T] contexts, masked exactly as capture masks."""
    masked = torch.tensor(sorted(masked_ids), dtype=torch.long)
    stream = islice(contexts, skip, skip + n_contexts)
    while batch := list(islice(stream, batch_size)):
        ids = torch.stack(batch)
        yield ids, keep_mask(ids, masked, mask_first_position)


def evaluate_sae(sae: SAE, batches: Iterable[torch.Tensor], model: nn.Module | None = None, hookpoint: str | None = None,
                 token_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 cfg: EvalConfig | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """All metrics as a JSON-ready dict; with `out_dir`, also write eval.json and the feature-density plot.
    `batches` are fp32 [B, d_in] activation rows (e.g. `ActivationStore.batches(..., shuffle=False)`).
    The splice metrics run when `model` and `token_batches` ((input_ids, keep mask) pairs, see
    `context_batches`) are given; `hookpoint` defaults to the SAE's recorded one."""
    cfg = cfg or EvalConfig()
    sae.eval()
    recon = reconstruction_metrics(sae, batches, cfg.dense_threshold)
    frequency = recon.pop("firing_frequency")
    results: dict[str, Any] = {"sae": {"activation": sae.cfg.activation, "d_in": sae.d_in, "d_sae": sae.d_sae,
                                       "k": sae.cfg.k, "hookpoint": sae.cfg.hookpoint, "model": sae.cfg.model},
                               "reconstruction": recon}
    if model is not None and token_batches is not None:
        hookpoint = hookpoint or sae.cfg.hookpoint
        require(hookpoint, "the SAE records no hookpoint; pass the hookpoint to splice it into (--hookpoint)")
        results["splice"] = {"hookpoint": hookpoint, **splice_metrics(sae, model, hookpoint, token_batches)}
    results["firing_frequency"] = [round(f, 8) for f in frequency.tolist()]
    if out_dir is not None:
        write_eval(results, out_dir)
    return _finite(results)


def write_eval(results: dict[str, Any], out_dir: str | Path) -> Path:
    out = ensure_writable_dir(out_dir)
    frequency = results["firing_frequency"]
    dead = sum(1 for f in frequency if f == 0)
    fig = histogram(frequency, xlabel="latent firing frequency (log scale)", logx=True,
                    title=f"feature density: {len(frequency)} latents, {dead} dead")
    save_figure(fig, out / DENSITY_PLOT)
    write_json_atomic(out / EVAL_FILE, _finite(results))
    return out / EVAL_FILE


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: report them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj

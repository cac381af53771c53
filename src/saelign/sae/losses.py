"""The two training steps SAE activations build on, and the metrics they share. Inputs are normalised.

- sparse (topk, batchtopk): the dense encoder product runs without autograd, the latents the activation
  selects get sparse gradients (`sparse_ops`), so no dense decoder or encoder-gradient product over all
  latents is ever formed. Loss = FVU, plus AuxK (Gao et al. 2024): the top-k_aux pre-activations among dead
  latents reconstruct the residual, normalised by the residual's variance and weighted by `auxk_alpha` -- this
  pulls dead latents back to life (dense products restricted to the dead latents).
- dense (relu, jumprelu): summed squared error per token + coefficient * a sparsity penalty, from four dense
  products; the activation gives the latents, their firing counts and the penalty.

Nothing here imports the SAE module: it imports the activations, which build on this one."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from saelign.sae.sparse_ops import ActiveLatents, selected_pre_acts, sparse_decode


class SAEParts(Protocol):
    """What training steps and activations read of `saelign.sae.model.SAE`."""

    cfg: Any  # SAEConfig
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None
    d_in: int
    d_sae: int


@dataclass
class TrainBatch:
    """One SAE's view of a training step: the batch and where training stands."""

    x: torch.Tensor  # normalised inputs [B, d_in]
    variance: torch.Tensor | None = None  # total_variance(x) when known (it is the same for a whole sweep)
    dead: torch.Tensor | None = None  # [d_sae] bool: latents silent for the dead window
    scratch: torch.Tensor | None = None  # [>= B, d_sae] buffer in the compute dtype, lent to sparse ones
    tokens_done: int = 0  # tokens trained on, this batch included (the clock of warmups)
    total_tokens: int = 0
    dtype: torch.dtype = torch.float32  # compute dtype of dense products
    # The FVU denominator of a batch: the trainer's spans all ranks' shares under torchrun (divided by their
    # number, so the mean of the ranks' gradients is the global batch's).
    variance_of: Callable[[torch.Tensor], torch.Tensor] | None = None  # None: total_variance


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar, differentiable
    sq_err: torch.Tensor  # summed squared reconstruction error (normalised units), detached
    fired: torch.Tensor  # [d_sae] bool: latents active on some token of the batch
    l0: torch.Tensor  # mean active latents per token
    aux: torch.Tensor | None = None  # AuxK loss (sparse) or sparsity penalty (dense)
    values: torch.Tensor | None = None  # sparse: the selected latents' values [N], detached


def linear_ramp(done: float, fraction: float, total: float) -> float:
    """0 -> 1 linearly over the first `fraction` of `total` (1 throughout when fraction is 0)."""
    return 1.0 if fraction == 0 else min(1.0, done / (fraction * total))


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """Summed squared deviation from the batch mean [B, d] -> scalar (the FVU denominator); one fused pass."""
    return (x.var(0, correction=0).sum() * x.shape[0]).clamp_min(torch.finfo(x.dtype).tiny)


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over a batch [B, d]."""
    return F.mse_loss(x_hat, x, reduction="sum") / total_variance(x)


def _auxk(sae: SAEParts, x: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor,
          variance_of: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """AuxK as dense products over the dead latents only: 3 B x d_in x n_dead multiply-adds, which beats
    gathering B x min(k_aux, n_dead) decoder rows one by one at every n_dead."""
    dead_idx = dead.nonzero().squeeze(1)
    k_aux = sae.d_in // 2
    W_dead = sae.W_enc[:, dead_idx]
    # (x - b_dec) @ W as x @ W - b_dec @ W: b_dec's gradient flows through the small bias, no [B, d_in] pass
    pre = torch.addmm(sae.b_enc[dead_idx] - sae.b_dec @ W_dead, x, W_dead)
    acts = F.relu(pre)
    if dead_idx.numel() > k_aux:  # only each token's k_aux largest dead pre-activations
        keep = torch.zeros_like(pre).scatter_(1, pre.detach().topk(k_aux, dim=1, sorted=False).indices, 1.0)
        acts = acts * keep
    residual_hat = acts @ sae.W_dec[dead_idx]
    # Fewer dead latents than k_aux get proportionally less weight (as in EleutherAI's sparsify).
    sq_err = F.mse_loss(residual_hat, residual, reduction="sum")
    return min(dead_idx.numel() / k_aux, 1.0) * sq_err / (variance_of or total_variance)(residual)


Select = Callable[[torch.Tensor, int], tuple[ActiveLatents, torch.Tensor]]


def sparse_step(sae: SAEParts, batch: TrainBatch, select: Select, auxk_alpha: float) -> StepResult:
    """Forward + loss (FVU + AuxK) of an activation that keeps the pairs `select(pre, k)` returns (with their
    pre-activations, flattened)."""
    x, scratch = batch.x, batch.scratch
    if scratch is None:  # a step outside the trainer, which lends one buffer to the SAEs of a sweep
        scratch = torch.empty(x.shape[0], sae.d_sae, device=x.device, dtype=batch.dtype)
    x_c = x - sae.b_dec.detach()
    with torch.no_grad():
        dt = scratch.dtype
        pre = torch.addmm(sae.b_enc.to(dt), x_c.to(dt), sae.W_enc.to(dt), out=scratch[: x.shape[0]])
    sel, values = select(pre, sae.cfg.k)
    acts = F.relu(selected_pre_acts(pre, x_c, sae.b_dec, sae.W_enc, sae.b_enc, sel, values))
    x_hat = sparse_decode(acts, sae.W_dec, sel) + sae.b_dec
    sq_err = F.mse_loss(x_hat, x, reduction="sum")  # one fused pass forward and backward
    variance = batch.variance if batch.variance is not None else (batch.variance_of or total_variance)(x)
    loss = sq_err / variance
    active = acts.detach() > 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, sel.cols[active], True)
    result = StepResult(loss, sq_err.detach(), fired, active.sum() / x.shape[0], values=acts.detach())
    dead = batch.dead
    if dead is not None and auxk_alpha > 0 and bool(dead.any()):
        aux = _auxk(sae, x, dead, x - x_hat.detach(), batch.variance_of)
        result.loss, result.aux = loss + auxk_alpha * aux, aux.detach()
    return result


Latents = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def dense_step(sae: SAEParts, x: torch.Tensor, latents: Latents, coefficient: float) -> StepResult:
    """Forward + loss of an activation whose `latents(pre)` gives (latents [B, d_sae], firing counts per
    latent [d_sae], sparsity penalty): four dense products, nothing else of size B x d_in x d_sae."""
    # b_dec enters through the bias (x - b_dec) @ W = x @ W - b_dec @ W, so autograd never forms the gradient
    # of the [B, d_in] input, which would be a fifth dense product.
    pre = torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, x, sae.W_enc)
    z, counts, penalty = latents(pre)
    x_hat = torch.addmm(sae.b_dec, z, sae.W_dec)
    sq_err = (x_hat - x).pow(2).sum()
    loss = sq_err / x.shape[0] + coefficient * penalty
    counts = counts.detach()
    return StepResult(loss, sq_err.detach(), counts > 0, counts.sum() / x.shape[0], penalty.detach())

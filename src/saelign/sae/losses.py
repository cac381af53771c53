"""Differentiable training forward passes and losses, one per activation family. Inputs are normalised.

- topk / batchtopk: the dense encoder product runs without autograd, the k selected latents per token get
  sparse gradients (`sparse_ops`), so no dense decoder or encoder-gradient product over all latents is ever
  formed. Loss = FVU, plus AuxK (Gao et al. 2024): the top-k_aux pre-activations among dead latents reconstruct
  the residual, normalised by the residual's variance and weighted by `auxk_alpha` -- this pulls dead latents
  back to life (dense products restricted to the dead latents).
- relu: summed squared error + coefficient * L1 of the latents (decoder rows are unit norm), SAELens'
  "standard" convention so coefficients carry over.
- jumprelu: z = pre * H(pre - theta), theta (sae.threshold) trained with straight-through estimators with a
  rectangle kernel of width `bandwidth` (Rajamanoharan et al. 2024); sparsity is the L0 (step STE) or
  Anthropic's tanh(c * z) penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd import Function

from saelign.sae.model import SAE
from saelign.sae.sparse_ops import ActiveLatents, selected_pre_acts, sparse_decode


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar, differentiable
    sq_err: torch.Tensor  # summed squared reconstruction error (normalised units), detached
    fired: torch.Tensor  # [d_sae] bool: latents active on some token of the batch
    l0: torch.Tensor  # mean active latents per token
    aux: torch.Tensor | None = None  # AuxK loss (topk/batchtopk) or sparsity penalty (relu/jumprelu)
    min_active: torch.Tensor | None = None  # batchtopk: smallest positive selected pre-activation


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """Summed squared deviation from the batch mean [B, d] -> scalar (the FVU denominator); one fused pass."""
    return (x.var(0, correction=0).sum() * x.shape[0]).clamp_min(torch.finfo(x.dtype).tiny)


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over a batch [B, d]."""
    return F.mse_loss(x_hat, x, reduction="sum") / total_variance(x)


def batch_topk_selection(pre: torch.Tensor, k: int) -> tuple[ActiveLatents, torch.Tensor]:
    """The k * B largest pre-activations of the whole batch, as a row-grouped selection and its values.

    A flat top-k over all B * d_sae entries costs ~6 row-wise top-k's, so winners are searched among each
    token's top 2k candidates; a token whose every candidate wins might hold more, and then the candidate
    width grows until none does. Exact up to ties at the threshold.
    """
    n_rows, n_cols = pre.shape
    total = k * n_rows
    width = min(n_cols, 2 * k)
    while True:
        cand_values, cand_cols = pre.topk(width, dim=-1, sorted=False)
        flat = cand_values.reshape(-1)
        threshold = flat.kthvalue(flat.numel() - total + 1).values
        if width == n_cols or not bool((cand_values.min(dim=1).values > threshold).any()):
            break
        width = min(n_cols, 4 * width)
    rows, pos = (cand_values >= threshold).nonzero(as_tuple=True)  # row-major, as ActiveLatents needs
    return ActiveLatents.from_rows(rows, cand_cols[rows, pos], n_rows, n_cols), cand_values[rows, pos]


def _auxk(sae: SAE, x: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """AuxK as dense products over the dead latents only. With n_dead dead latents they cost 3 B x d_in x n_dead
    multiply-adds, which beats gathering B x min(k_aux, n_dead) decoder rows one by one at every n_dead (the
    gather path was 300 ms of a 750 ms step at 111 dead of 4608 on this CPU; this is ~10 ms)."""
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
    return min(dead_idx.numel() / k_aux, 1.0) * fvu(residual, residual_hat)


def sparse_step(sae: SAE, x: torch.Tensor, pre_buffer: torch.Tensor, dead: torch.Tensor | None,
                auxk_alpha: float, x_var: torch.Tensor | None = None) -> StepResult:
    """TopK / BatchTopK forward + loss (FVU). `pre_buffer` [B, d_sae] is scratch space reused across steps;
    `x_var` is `total_variance(x)` when the caller already has it (it is the same for every SAE of a sweep)."""
    x_c = x - sae.b_dec.detach()
    with torch.no_grad():
        dt = pre_buffer.dtype
        pre = torch.addmm(sae.b_enc.to(dt), x_c.to(dt), sae.W_enc.to(dt), out=pre_buffer[: x.shape[0]])
    if sae.cfg.activation == "topk":
        values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        sel, values = ActiveLatents.from_topk(indices, sae.d_sae), values.reshape(-1)
    else:
        sel, values = batch_topk_selection(pre, sae.cfg.k)
    acts = F.relu(selected_pre_acts(pre, x_c, sae.b_dec, sae.W_enc, sae.b_enc, sel, values))
    x_hat = sparse_decode(acts, sae.W_dec, sel) + sae.b_dec
    sq_err = F.mse_loss(x_hat, x, reduction="sum")  # one fused pass forward and backward
    loss = sq_err / (x_var if x_var is not None else total_variance(x))
    active = acts.detach() > 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, sel.cols[active], True)
    result = StepResult(loss, sq_err.detach(), fired, active.sum() / x.shape[0])
    if sae.cfg.activation == "batchtopk":
        result.min_active = torch.where(active, acts.detach(), torch.inf).min()
    if dead is not None and auxk_alpha > 0 and bool(dead.any()):
        aux = _auxk(sae, x, dead, x - x_hat.detach())
        result.loss, result.aux = loss + auxk_alpha * aux, aux.detach()
    return result


class _JumpReLU(Function):
    """z = pre * H(pre - theta) and per-latent firing counts, with straight-through gradients for theta only:
    dz/dtheta = -(theta / eps) K and dH/dtheta = -(1 / eps) K, K = 1{|pre - theta| < eps / 2} (rectangle kernel).
    One function for both so the [B, d_sae] masks are computed once per pass."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth):  # type: ignore[override]
        # Float masks: on CPU, multiplying by or summing a bool tensor first makes a converted copy of it.
        mask = (pre > theta).to(pre.dtype)
        ctx.save_for_backward(pre, theta, mask)
        ctx.bandwidth = bandwidth
        ctx.set_materialize_grads(False)
        return pre * mask, mask.sum(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_z, grad_counts):  # type: ignore[override]
        pre, theta, mask = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs_() < eps / 2).to(pre.dtype)
        d_pre = d_theta = None
        if grad_z is not None:
            d_pre = grad_z * mask
            d_theta = -(theta / eps) * (grad_z * near).sum(0)
        if grad_counts is not None:
            from_counts = -grad_counts * near.sum(0) / eps
            d_theta = from_counts if d_theta is None else d_theta + from_counts
        return d_pre, d_theta, None


def jumprelu(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre * H(pre - theta) [B, d_sae], firing counts per latent [d_sae]); straight-through theta gradients."""
    return _JumpReLU.apply(pre, theta, bandwidth)


@dataclass
class DenseLossConfig:
    sparsity_coefficient: float  # already warmed up
    bandwidth: float = 0.05  # jumprelu only, as below
    penalty: str = "l0"  # jumprelu: "l0" or "tanh"
    tanh_scale: float = 4.0


def dense_step(sae: SAE, x: torch.Tensor, cfg: DenseLossConfig) -> StepResult:
    """ReLU / JumpReLU forward + loss: four dense products, nothing else of size B x d_in x d_sae."""
    # b_dec enters through the bias (x - b_dec) @ W = x @ W - b_dec @ W, so autograd never forms the gradient
    # of the [B, d_in] input, which would be a fifth dense product.
    pre = torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, x, sae.W_enc)
    if sae.cfg.activation == "relu":
        z = F.relu(pre)
        penalty = z.sum() / x.shape[0]
        with torch.no_grad():
            counts = torch.sign(z).sum(0)  # sign of a ReLU output is its 0/1 firing indicator, no bool pass
    else:
        assert sae.threshold is not None
        z, counts = jumprelu(pre, sae.threshold, cfg.bandwidth)
        if cfg.penalty == "tanh":
            penalty = torch.tanh(cfg.tanh_scale * z).sum() / x.shape[0]
        else:
            penalty = counts.sum() / x.shape[0]
    x_hat = torch.addmm(sae.b_dec, z, sae.W_dec)
    sq_err = (x_hat - x).pow(2).sum()
    loss = sq_err / x.shape[0] + cfg.sparsity_coefficient * penalty
    counts = counts.detach()
    return StepResult(loss, sq_err.detach(), counts > 0, counts.sum() / x.shape[0], penalty.detach())
